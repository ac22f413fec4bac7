// The fleet: workers, edges, admission and Redis, refreshed every few seconds; links into Grafana.
import {el, clear, dash} from './util.js';

export function mount(container, {api, session}) {
  const body = el('div.fleet', {id: 'fleet'});
  async function load() {
    let data;
    try { data = await api.get('/console/api/fleet'); } catch (error) { clear(body).append(el('p.error', {}, error.message)); return; }
    const a = data.admission, r = data.redis;
    clear(body).append(
      el('section.card', {}, el('h2', {}, 'Admission'), el('dl.facts', {},
        ['Mode', a.mode, 'Free slots', a.free, 'Capacity', a.capacity, 'Calls claimed', a.claimed, 'Waiting for a worker', a.unclaimed,
         'Reserved by TwiML', a.reserved, 'Callers on hold', a.on_hold, 'Live calls', data.live_calls]
          .map((v, i) => el(i % 2 ? 'dd' : 'dt', {}, dash(v))))),
      el('section.card', {}, el('h2', {}, 'Workers'), el('table.calls', {id: 'workers'},
        el('thead', {}, el('tr', {}, ['Worker', 'Calls', 'Capacity', 'Free', 'Draining', 'Heartbeat'].map((h) => el('th', {scope: 'col'}, h)))),
        el('tbody', {}, data.workers.length ? data.workers.map((w) => el('tr', {},
          el('th', {scope: 'row'}, w.id), el('td.num', {}, w.live), el('td.num', {}, w.capacity), el('td.num', {}, w.free),
          el('td', {}, w.draining ? el('span.badge.draining', {}, 'draining') : 'no'),
          el('td', {}, w.alive ? `${w.last_seen_s} s ago` : el('span.badge.ended', {}, 'gone')))) :
          el('tr', {}, el('td.empty', {colspan: 6}, 'No worker is reporting.'))))),
      el('section.card', {}, el('h2', {}, 'Edges'), data.edges.length ? el('ul', {}, data.edges.map((e) => el('li', {}, `${e.id}: ${e.calls} live call(s)`)))
        : el('p.muted', {}, 'No live calls on any edge.')),
      el('section.card', {}, el('h2', {}, 'Redis'), el('dl.facts', {},
        ['Reachable', r.ok ? 'yes' : 'no', 'Round trip', `${r.ping_ms} ms`, 'Version', r.version, 'Memory', r.used_memory_human,
         'Clients', r.connected_clients, 'Up', r.uptime_s != null ? `${Math.round(r.uptime_s / 60)} min` : null]
          .map((v, i) => el(i % 2 ? 'dd' : 'dt', {}, dash(v))))),
      el('section.card', {}, el('h2', {}, 'Dashboards'), session?.grafana_url
        ? el('p', {}, el('a', {href: session.grafana_url, target: '_blank', rel: 'noopener noreferrer'}, 'Open the Switchboard dashboard in Grafana ↗'))
        : el('p.muted', {}, 'Set CONSOLE_GRAFANA_URL to link the Grafana dashboard here.')));
  }
  container.append(el('h1', {}, 'Fleet'), body);
  load();
  const timer = setInterval(load, 3000);
  return {unmount() { clearInterval(timer); }};
}
