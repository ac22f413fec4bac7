// Agent settings: the default and the named profiles. Edit a few common fields or the whole
// JSON document; see the diff before saving; the API's validation errors appear next to the
// field they name; a stale version (412) offers a reload. Secrets read as "***" and stay as
// stored unless a new value is typed (write-only).
import {el, clear, lineDiff, confirmDialog, field} from './util.js';

// Common fields shown as inputs: [dotted path, label, element, help]. Others via the JSON document.
const FIELDS = [
  ['language', 'Language', () => el('input', {maxlength: 16})],
  ['greeting', 'Greeting', () => el('input', {maxlength: 2000})],
  ['think.prompt', 'Prompt', () => el('textarea', {rows: 6})],
  ['think.provider.type', 'LLM provider', () => el('input', {placeholder: 'open_ai'})],
  ['think.provider.model', 'LLM model', () => el('input', {placeholder: 'gpt-4o-mini'})],
  ['think.provider.temperature', 'Temperature', () => el('input', {type: 'number', step: '0.1'}), 'number'],
  ['think.provider.api_key', 'LLM API key', () => el('input', {type: 'password', autocomplete: 'off', placeholder: 'stored: type to replace'}), 'secret'],
  ['listen.provider.model', 'Speech-to-text model', () => el('input', {placeholder: 'nova-3'})],
  ['speak.provider.model', 'Voice', () => el('input', {placeholder: 'aura-2-thalia-en'})],
];

const getPath = (doc, path) => path.split('.').reduce((o, k) => (o && typeof o === 'object' ? o[k] : undefined), doc);
function setPath(doc, path, value) {
  const keys = path.split('.');
  let node = doc;
  for (const key of keys.slice(0, -1)) node = (node[key] && typeof node[key] === 'object') ? node[key] : (node[key] = {});
  if (value === undefined) delete node[keys.at(-1)]; else node[keys.at(-1)] = value;
}
const pretty = (doc) => JSON.stringify(doc, null, 2);

function listView(container, api) {
  const list = el('ul.profiles', {id: 'profiles'});
  const name = el('input', {id: 'new-profile', pattern: '[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}', required: true, placeholder: 'sales'});
  container.append(el('section.card', {}, el('h1', {}, 'Agent settings'),
    el('p', {}, el('a', {href: '#/settings/default'}, 'Default settings'), ' — used by calls whose profile has none.'),
    el('h2', {}, 'Profiles'), list,
    el('form.inline', {on: {submit: (e) => { e.preventDefault(); location.hash = `#/profiles/${encodeURIComponent(name.value)}`; }}},
      field('New profile', name), el('button', {type: 'submit'}, 'Create'))));
  api.get('/v1/profiles').then((data) => {
    clear(list).append(...(data.profiles.length ? data.profiles.map((p) => el('li', {},
      el('a', {href: `#/profiles/${encodeURIComponent(p.name)}`}, p.name), el('span.muted', {}, ` version ${p.version}`)))
      : [el('li.muted', {}, 'No profiles yet.')]));
  });
}

export function mount(container, {arg, name, api}) {
  if (name === 'profiles' && !arg) { listView(container, api); return {}; }
  const isDefault = name === 'settings';
  const url = isDefault ? '/v1/settings/default' : `/v1/profiles/${encodeURIComponent(arg)}`;
  let stored = null; // {version, settings} as last read
  const inputs = new Map();
  const json = el('textarea.code', {id: 'doc-json', rows: 16, spellcheck: false});
  const status = el('div', {id: 'editor-status', role: 'status', 'aria-live': 'polite'});
  const diffBox = el('div.diff', {id: 'diff', hidden: true});
  const version = el('span.muted', {id: 'doc-version'});
  const form = el('form.editor', {novalidate: true});
  for (const [path, label, make, kind] of FIELDS) {
    const input = make();
    input.id = `f-${path.replaceAll('.', '-')}`;
    input.dataset.path = path;
    input.dataset.kind = kind || '';
    inputs.set(path, input);
    form.append(field(label, input, kind === 'secret' ? 'Write-only: the stored key is never shown.' : null));
  }
  form.append(field('Whole document (JSON)', json, 'Fields above override the same fields here. "***" keeps a stored secret.'));
  const review = el('button', {type: 'submit'}, 'Review changes');
  form.append(el('div.buttons', {}, review,
    isDefault ? null : el('button.ghost.danger', {type: 'button', on: {click: remove}}, 'Delete profile')));

  function fill(doc) {
    stored = doc;
    version.textContent = doc.version ? `version ${doc.version} · ${doc.source}` : 'not saved yet';
    json.value = pretty(doc.settings);
    for (const [path, input] of inputs) {
      const value = getPath(doc.settings, path);
      input.value = input.dataset.kind === 'secret' ? '' : (value ?? '');
    }
  }

  function edited() {
    let doc;
    try { doc = JSON.parse(json.value || '{}'); } catch (error) { throw new Error(`The JSON document does not parse: ${error.message}`); }
    for (const [path, input] of inputs) {
      const before = getPath(stored.settings, path);
      if (input.dataset.kind === 'secret') { if (input.value) setPath(doc, path, input.value); continue; }
      if (input.value === String(before ?? '')) continue;
      const value = input.dataset.kind === 'number' ? (input.value === '' ? undefined : Number(input.value)) : (input.value || undefined);
      setPath(doc, path, value);
    }
    return doc;
  }

  function clearErrors() {
    for (const node of form.querySelectorAll('.field .error')) node.textContent = '';
    for (const node of form.querySelectorAll('[aria-invalid]')) node.removeAttribute('aria-invalid');
  }

  function showErrors(detail) {
    const loose = [];
    for (const problem of detail) {
      const path = (problem.loc || []).filter((p) => p !== 'body').join('.');
      const input = inputs.get(path) || [...inputs.entries()].find(([p]) => path.startsWith(p + '.'))?.[1];
      const target = input || json;
      target.setAttribute('aria-invalid', 'true');
      const slot = target.parentElement.querySelector('.error');
      const text = input ? problem.msg : `${path || 'document'}: ${problem.msg}`;
      slot.textContent = slot.textContent ? `${slot.textContent}; ${text}` : text;
      if (!input) loose.push(text);
    }
    (form.querySelector('[aria-invalid]') || json).focus();
  }

  async function save(doc) {
    clearErrors();
    try {
      const headers = stored.version ? {'If-Match': `"${stored.version}"`} : {};
      const {body} = await api.request('PUT', url, {json: doc, headers});
      fill(body);
      diffBox.hidden = true;
      status.className = 'ok';
      status.textContent = `Saved: version ${body.version}.`;
    } catch (error) {
      if (error.status === 412) {
        status.className = 'conflict';
        clear(status).append(el('strong', {}, 'Someone else saved this document first. '),
          `${error.message}. Your edit was not saved. `,
          el('button', {type: 'button', id: 'reload', on: {click: load}}, 'Reload the stored version'));
        status.querySelector('#reload').focus();
      } else if (error.status === 422 && Array.isArray(error.body?.detail)) {
        status.className = 'error';
        status.textContent = 'Not saved: fix the fields marked below.';
        diffBox.hidden = true;
        showErrors(error.body.detail);
      } else {
        status.className = 'error';
        status.textContent = `Not saved: ${error.message}`;
      }
    }
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearErrors();
    let doc;
    try { doc = edited(); } catch (error) { json.parentElement.querySelector('.error').textContent = error.message; json.focus(); return; }
    const lines = lineDiff(pretty(stored.settings), pretty(doc));
    clear(diffBox).append(el('h2', {}, 'Changes'));
    const changed = lines.filter((l) => l.op !== ' ');
    if (!changed.length) diffBox.append(el('p.muted', {}, 'Nothing changed.'));
    else diffBox.append(el('pre.diff-lines', {}, lines.filter((l, i) => l.op !== ' ' || lines.slice(Math.max(0, i - 2), i + 3).some((n) => n.op !== ' '))
      .map((l) => el(`span.${l.op === '+' ? 'add' : l.op === '-' ? 'del' : 'same'}`, {}, `${l.op} ${l.line}\n`))));
    const confirm = el('button', {type: 'button', id: 'confirm-save', disabled: !changed.length, on: {click: () => save(doc)}}, 'Save');
    diffBox.append(el('div.buttons', {}, confirm, el('button.ghost', {type: 'button', on: {click: () => { diffBox.hidden = true; review.focus(); }}}, 'Keep editing')));
    diffBox.hidden = false;
    confirm.focus();
  });

  async function remove() {
    if (!(await confirmDialog(`Delete profile ${arg}? Calls that name it fall back to the default settings.`, 'Delete'))) return;
    try {
      await api.request('DELETE', url, {headers: stored?.version ? {'If-Match': `"${stored.version}"`} : {}});
      location.hash = '#/profiles';
    } catch (error) { status.className = 'error'; status.textContent = error.message; }
  }

  async function load() {
    status.textContent = '';
    status.className = '';
    diffBox.hidden = true;
    clearErrors();
    try {
      const answer = await api.request('GET', url, {allow: [404]});
      if (answer instanceof Response) fill({version: 0, source: 'new', settings: {}});
      else fill(answer.body);
    } catch (error) { status.className = 'error'; status.textContent = error.message; }
  }

  container.append(el('p', {}, el('a', {href: '#/profiles'}, '← Agent settings')),
    el('section.card', {}, el('h1', {}, isDefault ? 'Default settings ' : 'Profile ', isDefault ? null : el('code', {}, arg), ' ', version),
      status, form, diffBox));
  load();
  return {};
}
