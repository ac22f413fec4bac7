// Live calls: a table fed by the hub (only changed rows arrive), filtered and paged in the
// browser so that 500 live calls render as one page of PAGE rows. Durations tick locally.
import {el, clear, dash, duration} from './util.js';

const PAGE = 50;
// Columns, in order; a feature that adds a record field adds a column here.
export const COLUMNS = [
  {key: 'direction', label: 'Dir', value: (r) => (r.direction === 'outbound' ? '↗ out' : '↘ in')},
  {key: 'from', label: 'From', value: (r) => dash(r.from)},
  {key: 'to', label: 'To', value: (r) => dash(r.to)},
  {key: 'profile', label: 'Profile', value: (r) => dash(r.profile)},
  {key: 'state', label: 'State', value: (r) => r.state, badge: true},
  {key: 'duration', label: 'Duration', value: (r, now) => duration(r.started_at ? (r.ended_at || now) - r.started_at : null), num: true},
  {key: 'turns', label: 'Turns', value: (r) => r.turns, num: true},
  {key: 'worker', label: 'Worker', value: (r) => dash(r.worker)},
  {key: 'edge', label: 'Edge', value: (r) => dash(r.edge)},
  {key: 'amd', label: 'AMD', value: (r) => dash(r.amd)},
  {key: 'transfers', label: 'Transfers', value: (r) => dash(r.transfers)},
];

const filters = {text: '', state: '', profile: '', worker: '', direction: ''};
let page = 0;

export function matches(row, f = filters) {
  if (f.state && row.state !== f.state) return false;
  if (f.profile && (row.profile || '') !== f.profile) return false;
  if (f.worker && (row.worker || '') !== f.worker) return false;
  if (f.direction && row.direction !== f.direction) return false;
  if (f.text) {
    const needle = f.text.toLowerCase();
    const hay = [row.call_sid, row.from, row.to, row.profile, row.worker, row.edge].join(' ').toLowerCase();
    if (!hay.includes(needle)) return false;
  }
  return true;
}

function options(select, values, current) {
  const have = [...select.options].map((o) => o.value).slice(1).join('\n');
  const want = [...values].sort();
  if (have === want.join('\n')) return;
  select.length = 1;
  for (const value of want) select.add(new Option(value, value, false, value === current));
}

export function mount(container) {
  const count = el('p.muted', {id: 'calls-count', role: 'status'});
  const text = el('input', {type: 'search', id: 'filter-text', placeholder: 'Number, call SID, worker…', value: filters.text});
  const state = el('select', {id: 'filter-state'}, new Option('any state', ''),
                   ...['dialing', 'waiting', 'connecting', 'active'].map((s) => new Option(s, s, false, filters.state === s)));
  const direction = el('select', {id: 'filter-direction'}, new Option('any direction', ''),
                       new Option('inbound', 'inbound'), new Option('outbound', 'outbound'));
  direction.value = filters.direction;
  const profile = el('select', {id: 'filter-profile'}, new Option('any profile', ''));
  const worker = el('select', {id: 'filter-worker'}, new Option('any worker', ''));
  const body = el('tbody');
  const pager = el('div.pager');
  const tableEl = el('table.calls', {id: 'calls-table'},
    el('caption.visually-hidden', {}, 'Live calls'),
    el('thead', {}, el('tr', {}, el('th', {scope: 'col'}, 'Call'), COLUMNS.map((c) => el('th', {scope: 'col', class: c.num ? 'num' : ''}, c.label)))),
    body);
  let latest = null;
  let frame = 0;

  const onFilter = () => {
    Object.assign(filters, {text: text.value.trim(), state: state.value, direction: direction.value,
                            profile: profile.value, worker: worker.value});
    page = 0;
    draw();
  };
  for (const input of [text, state, direction, profile, worker]) input.addEventListener('input', onFilter);

  function draw() {
    frame = 0;
    if (!latest) return;
    const now = Date.now() / 1000;
    const rows = [...latest.rows.values()];
    options(profile, new Set(rows.map((r) => r.profile).filter(Boolean)), filters.profile);
    options(worker, new Set(rows.map((r) => r.worker).filter(Boolean)), filters.worker);
    const shown = rows.filter((r) => matches(r)).sort((a, b) => (b.started_at || 0) - (a.started_at || 0));
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(page, pages - 1);
    clear(body);
    for (const row of shown.slice(page * PAGE, page * PAGE + PAGE)) {
      body.append(el('tr', {dataset: {callSid: row.call_sid}},
        el('th', {scope: 'row'}, el('a', {href: `#/call/${encodeURIComponent(row.call_sid)}`, title: row.call_sid},
                                    row.call_sid.slice(0, 10) + '…')),
        COLUMNS.map((c) => el('td', {class: c.num ? 'num' : '', dataset: {col: c.key}},
          c.badge ? el(`span.badge.${row.state}`, {}, c.value(row, now)) : c.value(row, now)))));
    }
    if (!shown.length) body.append(el('tr', {}, el('td.empty', {colspan: COLUMNS.length + 1},
      latest.total ? 'No live call matches the filters.' : 'No live calls right now.')));
    count.textContent = `${latest.total} live call${latest.total === 1 ? '' : 's'}` +
      (shown.length !== rows.length ? ` · ${shown.length} shown by the filters` : '');
    clear(pager).append(
      el('button.ghost', {type: 'button', disabled: page === 0, on: {click: () => { page--; draw(); }}}, '← Newer'),
      el('span', {}, ` page ${page + 1} of ${pages} `),
      el('button.ghost', {type: 'button', disabled: page >= pages - 1, on: {click: () => { page++; draw(); }}}, 'Older →'));
    // Since navigation start: when this page first showed live rows (measured by the tests).
    if (latest.rows.size && window.__consoleFirstRows === undefined) window.__consoleFirstRows = performance.now();
  }

  const schedule = () => { if (!frame) frame = requestAnimationFrame(draw); };
  const ticker = setInterval(schedule, 1000);
  container.append(el('section.card', {},
    el('div.head', {}, el('h1', {}, 'Live calls'), count),
    el('div.filters', {role: 'search'}, text, state, direction, profile, worker),
    el('div.scroll', {}, tableEl), pager));
  return {
    onRows(feed) { latest = feed; schedule(); },
    unmount() { clearInterval(ticker); if (frame) cancelAnimationFrame(frame); },
  };
}
