// Ended calls within retention: GET /v1/calls/ended with the API's own filters, newest first,
// one page at a time (`next_before` continues).
import {el, clear, dash, duration, dateTime, field} from './util.js';

const saved = {since: '', until: '', outcome: '', profile: '', direction: '', number: ''};

function toUnix(local) { return local ? Date.parse(local) / 1000 : null; }

export function mount(container, {api}) {
  const inputs = {
    since: el('input', {type: 'datetime-local', id: 'ended-since', value: saved.since}),
    until: el('input', {type: 'datetime-local', id: 'ended-until', value: saved.until}),
    outcome: el('input', {id: 'ended-outcome', placeholder: 'completed', value: saved.outcome, pattern: '[a-z0-9_]{1,64}'}),
    profile: el('input', {id: 'ended-profile', placeholder: 'sales', value: saved.profile}),
    direction: el('select', {id: 'ended-direction'}, new Option('any', ''), new Option('inbound', 'inbound'), new Option('outbound', 'outbound')),
    number: el('input', {id: 'ended-number', placeholder: '+1415…', value: saved.number, inputmode: 'tel'}),
  };
  inputs.direction.value = saved.direction;
  const body = el('tbody');
  const status = el('p.muted', {role: 'status'});
  const more = el('button.ghost', {type: 'button', hidden: true}, 'Older calls →');
  let cursor = null;

  async function search(append = false) {
    Object.assign(saved, Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v.value.trim()])));
    const query = new URLSearchParams({limit: '50'});
    const since = toUnix(saved.since), until = toUnix(saved.until);
    if (since) query.set('since', since);
    if (until) query.set('until', until);
    for (const key of ['outcome', 'profile', 'direction', 'number']) if (saved[key]) query.set(key, saved[key]);
    if (append && cursor) query.set('before', cursor);
    for (const node of container.querySelectorAll('.field .error')) node.textContent = '';
    status.textContent = 'searching…';
    try {
      const data = await api.get(`/v1/calls/ended?${query}`);
      if (!append) clear(body);
      for (const c of data.calls) {
        body.append(el('tr', {},
          el('th', {scope: 'row'}, el('a', {href: `#/call/${encodeURIComponent(c.call_sid)}`}, c.call_sid.slice(0, 10) + '…')),
          el('td', {}, dateTime(c.ended_at)), el('td', {}, c.direction), el('td', {}, dash(c.from)), el('td', {}, dash(c.to)),
          el('td', {}, dash(c.profile)), el('td.num', {}, duration(c.started_at && c.ended_at ? c.ended_at - c.started_at : null)),
          el('td.num', {}, c.turns), el('td', {}, dash(c.outcome)), el('td', {}, dash(c.worker))));
      }
      cursor = data.next_before;
      more.hidden = cursor === null;
      status.textContent = body.childElementCount ? `${body.childElementCount} ended call(s)` : 'No ended call matches.';
    } catch (error) {
      status.textContent = '';
      for (const problem of error.body?.detail || []) {
        const name = problem.loc?.[problem.loc.length - 1];
        const slot = inputs[name]?.parentElement.querySelector('.error');
        if (slot) slot.textContent = problem.msg;
      }
      if (!Array.isArray(error.body?.detail)) status.textContent = error.message;
    }
  }

  const form = el('form.filters.grid', {role: 'search', on: {submit: (e) => { e.preventDefault(); search(); }}},
    field('Ended after', inputs.since), field('Ended before', inputs.until), field('Outcome', inputs.outcome),
    field('Profile', inputs.profile), field('Direction', inputs.direction), field('Number', inputs.number),
    el('div.field', {}, el('button', {type: 'submit'}, 'Search')));
  more.addEventListener('click', () => search(true));
  container.append(el('section.card', {}, el('h1', {}, 'Ended calls'), form, status,
    el('div.scroll', {}, el('table.calls', {id: 'ended-table'}, el('thead', {}, el('tr', {},
      ['Call', 'Ended', 'Dir', 'From', 'To', 'Profile', 'Duration', 'Turns', 'Outcome', 'Worker'].map((h) => el('th', {scope: 'col'}, h)))),
      body)), more));
  search();
  return {};
}
