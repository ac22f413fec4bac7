// One call: its header (from the record), the live transcript (from the tab's feed), the
// actions (live calls) and the recording (ended calls whose journal kept audio).
import {el, clear, dash, duration, dateTime, confirmDialog, field} from './util.js';
import {Transcript} from './transcript.js';

// Live actions: each posts to the API and shows the owner's acknowledgement (or the API's
// refusal, e.g. a transfer target off the allow-list). A new command is one more entry here.
export const ACTIONS = [
  {
    id: 'say', label: 'Say', path: 'say',
    inputs: () => [field('Agent says', el('input', {id: 'act-say', maxlength: 2000, required: true})),
                   field('When', el('select', {id: 'act-say-behavior'}, new Option('after the current speech', 'queue'),
                                    new Option('now, interrupting', 'interrupt')))],
    body: (f) => ({text: f['act-say'].value, behavior: f['act-say-behavior'].value}),
  },
  {
    id: 'prompt', label: 'Change prompt', path: 'prompt',
    inputs: () => [field('New prompt', el('textarea', {id: 'act-prompt', rows: 3, maxlength: 25000, required: true}))],
    body: (f) => ({prompt: f['act-prompt'].value}),
  },
  {
    id: 'voice', label: 'Change voice', path: 'voice',
    inputs: () => [field('Deepgram voice model', el('input', {id: 'act-voice', placeholder: 'aura-2-luna-en', required: true}))],
    body: (f) => ({speak: {provider: {type: 'deepgram', model: f['act-voice'].value}}}),
  },
  {
    id: 'hangup', label: 'Hang up', path: 'hangup', danger: true,
    inputs: () => [el('label.check', {}, el('input', {type: 'checkbox', id: 'act-hangup-after'}), ' after the current reply')],
    body: (f) => ({after_reply: f['act-hangup-after'].checked}),
    confirm: (row) => `Hang up the call from ${row?.from || 'this caller'} now?`,
  },
  {
    id: 'transfer', label: 'Transfer', path: 'transfer',
    inputs: () => [field('Transfer to', el('input', {id: 'act-transfer-to', placeholder: '+14155550100', maxlength: 256,
                                                     required: true}),
                         'a number or SIP URI on the profile\'s transfer.destinations'),
                   field('How', el('select', {id: 'act-transfer-mode'},
                                    new Option('cold: redirect once the agent\'s sentence has played', 'cold'),
                                    new Option('warm: hold, brief the person, then join', 'warm'))),
                   field('Agent says first (optional)', el('input', {id: 'act-transfer-announce', maxlength: 500}))],
    body: (f) => ({to: f['act-transfer-to'].value.trim(), mode: f['act-transfer-mode'].value,
                   ...(f['act-transfer-announce'].value.trim() ? {announce: f['act-transfer-announce'].value.trim()} : {})}),
    confirm: (row, f) => `Transfer the call from ${row?.from || 'this caller'} to ${f['act-transfer-to'].value.trim()} (${f['act-transfer-mode'].value})?`,
  },
];

function header(row, detail) {
  const r = {...(detail || {}), ...(row || {})};
  const now = Date.now() / 1000;
  const items = [
    ['State', el(`span.badge.${r.state}`, {id: 'call-state'}, dash(r.state))],
    ['Direction', r.direction], ['From', r.from], ['To', r.to], ['Profile', r.profile],
    ['Worker', el('span', {id: 'call-worker'}, dash(r.worker))], ['Edge', r.edge],
    ['Started', dateTime(r.started_at)],
    ['Duration', duration(r.started_at ? (r.ended_at || now) - r.started_at : null)],
    ['Turns', r.turns], ['AMD', r.amd], ['Transfers', r.transfers],
    ['Outcome', r.outcome ? `${r.outcome}${r.end_reason ? ` (${r.end_reason})` : ''}` : null],
  ];
  return el('dl.facts', {}, items.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v instanceof Node ? v : dash(v))]));
}

export function mount(container, {arg: callSid, api}) {
  const path = `/v1/calls/${encodeURIComponent(callSid)}`;
  let row = null;
  let detail = null;
  const facts = el('div', {id: 'call-facts'});
  const list = el('ol.transcript', {id: 'transcript', 'aria-live': 'polite', 'aria-label': 'Transcript'});
  const actions = el('section.card.actions', {id: 'call-actions', 'aria-label': 'Actions'});
  const recording = el('section.card', {id: 'recording', hidden: true, 'aria-label': 'Recording'});
  const transcript = new Transcript(list, {
    onFailover: (node) => refresh().then(() => {
      if (row?.worker) node.querySelector('.what').textContent = `Failover: moved to ${row.worker}`;
    }),
    onEnded: () => setTimeout(refresh, 300),
  });
  let historyDone = false;

  async function refresh() {
    try {
      [row, detail] = await Promise.all([api.get(`/console/api/calls/${encodeURIComponent(callSid)}`), api.get(path)]);
    } catch (error) {
      clear(facts).append(el('p.error', {}, error.status === 404 ? `Call ${callSid} not found (or its retention is over).` : error.message));
      return;
    }
    clear(facts).append(header(row, detail));
    drawActions();
    if (row.state === 'ended') loadRecording();
  }

  function drawActions() {
    clear(actions);
    if (row?.state === 'ended') { actions.hidden = true; return; }
    actions.hidden = false;
    actions.append(el('h2', {}, 'Actions'));
    for (const action of ACTIONS) {
      const out = el('output.ack', {id: `ack-${action.id}`, 'aria-live': 'polite'});
      const form = el('form.action', {dataset: {action: action.id}}, action.inputs(),
        el('button', {type: 'submit', class: action.danger ? 'danger' : ''}, action.label), out);
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        const fields = Object.fromEntries([...form.querySelectorAll('[id]')].map((n) => [n.id, n]));
        if (action.confirm && !(await confirmDialog(action.confirm(row, fields), action.label))) return;
        out.textContent = 'sent, waiting for the owner…';
        out.className = 'ack pending';
        try {
          const {body} = await api.request('POST', `${path}/${action.path}`, {json: action.body(fields)});
          out.className = `ack ${body.applied ? 'ok' : 'refused'}`;
          out.textContent = body.applied ? `✓ applied by ${body.worker || 'the owner'}: ${body.detail}`
            : `✗ refused by ${body.worker || 'the owner'}: ${body.detail}`;
        } catch (error) {
          out.className = 'ack refused';
          out.textContent = `✗ ${error.status === 504 ? 'no acknowledgement in time' : error.message}`;
        }
      });
      actions.append(form);
    }
  }

  async function loadRecording() {
    if (!recording.hidden || recording.dataset.tried) return;
    recording.dataset.tried = '1';
    const wav = `${path}/recording.wav`;
    // Fetched whole into a blob: the API streams the WAV without byte ranges, and a media
    // element can seek only in what it can address (about 32 kB per second of call).
    let blob = null;
    try {
      const response = await fetch(wav, {credentials: 'same-origin'});
      if (response.ok) blob = await response.blob();
    } catch { /* no recording shown */ }
    clear(recording).append(el('h2', {}, 'Recording'));
    recording.hidden = false;
    if (!blob) {
      recording.append(el('p.muted', {}, 'No recording: the journal kept no audio for this call (journal.audio off).'),
                       el('a', {href: `${path}/journal`, download: ''}, 'Download the journal (if recorded)'));
      return;
    }
    const audio = el('audio', {id: 'recording-audio', controls: true, preload: 'auto', src: URL.createObjectURL(blob)});
    const tracks = el('div.tracks', {}, 'Tracks: ',
      el('label.check', {}, el('input', {type: 'checkbox', checked: true, id: 'track-caller'}), ' caller (left)'),
      el('label.check', {}, el('input', {type: 'checkbox', checked: true, id: 'track-agent'}), ' agent (right)'));
    let gains = null;
    tracks.addEventListener('change', () => {
      // Muting a track needs Web Audio (the file is one stereo stream): set up on first use.
      if (!gains) {
        const context = new AudioContext();
        const source = context.createMediaElementSource(audio);
        const split = context.createChannelSplitter(2), merge = context.createChannelMerger(2);
        gains = [context.createGain(), context.createGain()];
        source.connect(split);
        gains.forEach((gain, i) => { split.connect(gain, i); gain.connect(merge, 0, 0); gain.connect(merge, 0, 1); });
        merge.connect(context.destination);
      }
      gains[0].gain.value = tracks.querySelector('#track-caller').checked ? 1 : 0;
      gains[1].gain.value = tracks.querySelector('#track-agent').checked ? 1 : 0;
    });
    recording.append(audio, tracks, el('p', {},
      el('a', {href: wav, download: `${callSid}.wav`}, 'Download WAV'), ' · ',
      el('a', {href: `${path}/journal`, download: `${callSid}.jsonl`}, 'Download journal')));
  }

  const ticker = setInterval(() => { if (row && row.state !== 'ended') clear(facts).append(header(row, detail)); }, 1000);
  container.append(
    el('p', {}, el('a', {href: '#/calls'}, '← Live calls'), ' · ', el('a', {href: '#/ended'}, 'Ended calls')),
    el('div.call-grid', {},
      el('section.card', {}, el('h1', {}, 'Call ', el('code', {}, callSid)), facts,
         el('h2', {}, 'Transcript'), list),
      el('div', {}, actions, recording,
         el('section.card.legend', {}, el('h2', {}, 'Legend'),
           el('p', {}, el('span.seg.ours.swatch'), ' Switchboard hops  ', el('span.seg.theirs.swatch'), ' Deepgram stages'),
           el('p', {}, el('s.unheard', {}, 'struck text'), ' was cut off by the caller and never heard')))));
  refresh();
  return {
    onCall(event, _id, done) {
      if (done) { historyDone = true; return; }
      transcript.add(event, historyDone);
      if (event.type === 'transcript' && row) { row.turns = (row.turns || 0); }
    },
    onRows(feed) {
      for (const r of feed.rows.values()) if (r.call_sid === callSid) {
        const changed = !row || r.state !== row.state || r.worker !== row.worker;
        row = {...row, ...r};
        if (changed) { clear(facts).append(header(row, detail)); if (!actions.childElementCount) drawActions(); }
      }
    },
    unmount() { clearInterval(ticker); },
  };
}
