// The tab's one live connection (server-sent events from the control process' hub): the live
// calls table, and the events of the call this tab has open. Reconnects by itself; a `resync`
// from the server (this tab fell behind) starts over from a fresh snapshot.

export class Feed {
  constructor({onRows, onCall, onState}) {
    this.rows = new Map();
    this.total = 0;
    this.onRows = onRows;
    this.onCall = onCall;
    this.onState = onState;
    this.source = null;
    this.call = null;
  }

  open(call = null) {
    if (this.source && this.call === call) return;
    this.close();
    this.call = call;
    const url = '/console/api/live?table=true' + (call ? `&call=${encodeURIComponent(call)}` : '');
    const source = new EventSource(url, {withCredentials: true});
    this.source = source;
    this.onState('connecting');
    source.addEventListener('open', () => this.onState('live'));
    source.addEventListener('error', () => this.onState(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting'));
    source.addEventListener('snapshot', (e) => {
      const data = JSON.parse(e.data);
      this.rows = new Map(data.rows.map((row) => [row.stream_sid, row]));
      this.total = data.total;
      this.onRows(this);
    });
    source.addEventListener('rows', (e) => {
      const data = JSON.parse(e.data);
      for (const row of data.upsert) this.rows.set(row.stream_sid, row);
      for (const sid of data.remove) this.rows.delete(sid);
      this.total = data.total;
      this.onRows(this);
    });
    source.addEventListener('call', (e) => this.onCall(JSON.parse(e.data), e.lastEventId, false));
    source.addEventListener('history_done', () => this.onCall({type: '_history_done'}, '', true));
    source.addEventListener('resync', () => { this.close(); setTimeout(() => this.open(call), 500); });
  }

  close() {
    if (this.source) this.source.close();
    this.source = null;
    this.onState('');
  }
}
