// One call's timeline built from its events as they arrive (history first, then live): what
// was said, what the caller heard of each reply, and everything that happened around it.
// Kept apart from the view so a new event type (transfer, AMD verdict, …) is one entry in KINDS.
import {el, clock} from './util.js';

const SWITCHBOARD_STAGES = new Set(['caller_to_deepgram', 'worker_to_edge']);
// Events with nothing to show an operator (audio bookkeeping); anything else unknown is shown plainly.
const QUIET = new Set(['user_started_speaking', 'agent_audio_done', 'agent_thinking', 'deepgram_closed',
                       'think_updated', 'reask', '_history_done']);

export function latencyBar(turn, scaleMs) {
  const stages = Object.entries(turn.stages || {});
  const fine = stages.filter(([k]) => k.startsWith('deepgram_') && k !== 'deepgram_total');
  const parts = [...stages.filter(([k]) => k === 'caller_to_deepgram'),
                 ...(fine.length ? fine : stages.filter(([k]) => k === 'deepgram_total')),
                 ...stages.filter(([k]) => k === 'worker_to_edge')];
  const ours = stages.filter(([k]) => SWITCHBOARD_STAGES.has(k)).reduce((s, [, v]) => s + v, 0);
  const theirs = (turn.stages?.deepgram_total) ?? fine.reduce((s, [, v]) => s + v, 0);
  const bar = el('div.latency-bar', {role: 'img',
    'aria-label': `Turn ${turn.reply}: Switchboard ${ours.toFixed(1)} ms, Deepgram ${Math.round(theirs)} ms`});
  for (const [name, ms] of parts) {
    const width = Math.max(0.6, (ms / Math.max(scaleMs, 1)) * 100);
    const seg = el(`span.seg.${SWITCHBOARD_STAGES.has(name) ? 'ours' : 'theirs'}`, {title: `${name.replaceAll('_', ' ')}: ${ms} ms`});
    seg.style.width = `${width}%`; // through the CSSOM: the page's CSP allows no inline style attributes
    bar.append(seg);
  }
  return el('div.latency', {dataset: {reply: turn.reply}}, bar,
    el('small', {}, `Switchboard ${ours.toFixed(1)} ms · Deepgram ${Math.round(theirs)} ms`,
       fine.length ? ` (${fine.map(([k, v]) => `${k.replace('deepgram_', '')} ${Math.round(v)}`).join(', ')})` : ''));
}

export class Transcript {
  constructor(list, {onFailover, onEnded} = {}) {
    this.list = list;
    this.byReply = new Map();
    this.spoken = null;
    this.lastTs = null;
    this.turns = [];
    this.scale = 1000;
    this.onFailover = onFailover || (() => {});
    this.onEnded = onEnded || (() => {});
    this.ended = false;
  }

  add(event, live) {
    const kind = event.type;
    const handler = KINDS[kind];
    let node = null;
    if (handler) node = handler.call(this, event);
    else if (!QUIET.has(kind)) node = this.note('other', `${kind.replaceAll('_', ' ')}`, event);
    if (node) {
      node.dataset.kind = kind;
      if (event.ts) node.prepend(el('time', {datetime: new Date(event.ts * 1000).toISOString()}, clock(event.ts)));
      this.list.append(node);
      if (live && event.ts) {
        // Measured: the event's time on the worker → the text on this screen (same host clock in tests).
        (window.__consoleLatencies ||= []).push({kind, ms: Date.now() - event.ts * 1000});
      }
    }
    if (event.ts) this.lastTs = event.ts;
    return node;
  }

  note(kind, text, event, extra) {
    return el(`li.event.${kind}`, {}, el('span.what', {}, text), extra ? el('span.detail', {}, extra) : null);
  }

  line(role, content) {
    return el(`li.line.${role}`, {}, el('span.role', {}, role === 'assistant' ? 'Agent' : role === 'user' ? 'Caller' : role),
              el('span.text', {}, content));
  }
}

// Event type → how it shows (`this` is the Transcript). Return an <li> to append, or null.
export const KINDS = {
  transcript(e) {
    const node = this.line(e.role, e.content);
    if (e.role === 'assistant') this.spoken = node;
    return node;
  },
  agent_started_speaking(e) {
    if (typeof e.reply !== 'number') return null;
    if (this.byReply.has(e.reply)) this.byReply.clear(); // a new agent session numbers its replies from 1 again
    if (this.spoken) { this.byReply.set(e.reply, this.spoken); this.spoken.dataset.reply = e.reply; this.spoken = null; }
    return null;
  },
  reply_heard(e) {
    const node = this.byReply.get(e.reply);
    if (!node) return null;
    const text = node.querySelector('.text');
    if (e.interrupted && e.unheard_text) {
      text.replaceChildren(el('span.heard', {}, e.heard_text || ''), ' ',
        el('s.unheard', {title: 'Not heard: cut off when the caller spoke'}, e.unheard_text));
      node.classList.add('interrupted');
      node.append(el('small.cut', {}, `cut off by the caller: ${(e.heard_ms / 1000).toFixed(1)} s played of the ${(e.audio_ms / 1000).toFixed(1)} s received`));
    } else {
      node.classList.add('heard');
    }
    return null;
  },
  turn_latency(e) {
    const turn = {reply: e.reply, stages: e.stages || {}};
    const total = Object.entries(turn.stages).filter(([k]) => !(k.startsWith('deepgram_') && k !== 'deepgram_total'
      && 'deepgram_total' in turn.stages)).reduce((s, [, v]) => s + v, 0);
    this.scale = Math.max(this.scale, total);
    const node = this.byReply.get(e.reply);
    const bar = latencyBar(turn, this.scale);
    const old = node?.querySelector('.latency');
    if (old) old.replaceWith(bar); else if (node) node.append(bar);
    return node ? null : this.note('latency', `turn ${e.reply} latency`, e, bar);
  },
  barge_in() { return this.note('barge', 'Caller barged in'); },
  dtmf(e) { return this.note('dtmf', `Keypad: ${e.digit}`); },
  function_call(e) {
    return this.note(`function ${e.outcome === 'ok' ? 'ok' : 'failed'}`, `ƒ ${e.name}(${e.arguments || ''})`, e,
      `→ ${e.response || ''}${e.ms != null ? ` · ${Math.round(e.ms)} ms` : ''}${e.outcome && e.outcome !== 'ok' ? ` · ${e.outcome}` : ''}`);
  },
  dead_air(e) {
    const what = e.kind === 'agent_stall' ? 'agent silent' : 'caller silent';
    return this.note('deadair', `Dead air: ${what} ${e.silent_s} s`, e, e.action ? `→ ${e.action}` : '');
  },
  deepgram_connected(e) {
    if (!e.resumed) return null;
    const gap = this.lastTs && e.ts ? e.ts - this.lastTs : null;
    const node = this.note('failover', 'Failover: the call moved', e, gap !== null ? `after ${gap.toFixed(1)} s` : '');
    this.onFailover(node, gap);
    return node;
  },
  agent_reconnect(e) { return this.note('failover', `Deepgram reconnect #${e.attempt}`, e, e.cause ? `(${e.cause})` : ''); },
  resumed_from_stream(e) { return this.note('failover', 'Resumed after the edge was lost', e, `from stream ${e.stream_sid}`); },
  stream_moved(e) { return this.note('failover', 'Edge lost: the call continues on a new stream', e, e.to); },
  transfer(e) {
    const what = `${e.mode === 'warm' ? 'Warm' : 'Cold'} transfer to ${e.target || e.to || '?'}`;
    return this.note('transfer', `${what}: ${e.step || e.status || '?'}`, e, e.reason ? `(${e.reason})` : '');
  },
  amd(e) { return this.note('amd', `Answered by: ${e.answered_by || e.verdict || '?'}`); },
  amd_verdict(e) {
    return this.note('amd', `Answered by: ${e.answered_by || '?'}`, e,
                     e.detection_ms != null ? `Twilio decided in ${e.detection_ms} ms` : '');
  },
  amd_decision(e) {
    return this.note('amd', `Answering machine: ${e.behaviour || e.action || '?'}`, e,
                     [e.action, e.waited_ms != null ? `greeting waited ${Math.round(e.waited_ms)} ms` : ''].filter(Boolean).join(' · '));
  },
  dtmf_entry(e) {
    const digits = e.count ? e.digits : 'nothing keyed';
    return this.note('dtmf', `Keypad entry: ${digits}`, e,
                     [`${e.ended_by || ''}`, e.to && e.to !== 'none' ? `→ ${e.to}` : '', e.masked ? 'masked' : '']
                       .filter(Boolean).join(' · '));
  },
  precall(e) {
    return this.note(e.outcome === 'ok' ? 'command' : 'warning', `Pre-call lookup: ${e.outcome || '?'}`, e,
                     [e.ms != null ? `${Math.round(e.ms)} ms` : '', e.detail || ''].filter(Boolean).join(' · '));
  },
  prompt_updated() { return this.note('command', 'Deepgram applied the new prompt'); },
  speak_updated() { return this.note('command', 'Deepgram applied the new voice'); },
  injection_refused(e) { return this.note('warning', 'Deepgram refused the injected message', e, e.message || ''); },
  command_result(e) { return this.note(e.ok ? 'command' : 'warning', `${e.op}: ${e.ok ? 'applied' : 'refused'}`, e, e.detail || ''); },
  hangup_requested(e) { return this.note('end', 'Hang-up requested', e, e.reason || ''); },
  error(e) { return this.note('error', 'Error', e, [e.code, e.message || e.description].filter(Boolean).join(': ')); },
  warning(e) { return this.note('warning', 'Warning', e, e.message || e.description || ''); },
  call_ended(e) {
    if (e.reason === 'moved_to_new_stream') return null;
    this.ended = true;
    this.onEnded(e);
    return this.note('end', 'Call ended', e, [e.reason, e.outcome].filter(Boolean).join(' · '));
  },
};
