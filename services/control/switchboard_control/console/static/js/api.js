// The API as the console uses it: same origin, the session cookie, and the CSRF token on writes.
// The API token itself is sent exactly once (sign-in) and never kept.

let csrf = null;
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, body) {
    super(typeof body?.detail === 'string' ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export function setSignedOutHandler(fn) { onSignedOut = fn; }
export const signedIn = () => csrf !== null;

export async function request(method, path, {json, headers = {}, allow = []} = {}) {
  const init = {method, headers: {...headers}, credentials: 'same-origin', cache: 'no-store'};
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  }
  if (method !== 'GET' && csrf) init.headers['X-CSRF-Token'] = csrf;
  const response = await fetch(path, init);
  if (allow.includes(response.status)) return response;
  const body = (response.headers.get('content-type') || '').includes('json') ? await response.json() : null;
  if (response.status === 401 && !path.startsWith('/console/session')) {
    csrf = null;
    onSignedOut('Your session ended. Sign in again.');
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return {body, response};
}

export const get = (path) => request('GET', path).then((r) => r.body);

export async function signIn(token) {
  const {body} = await request('POST', '/console/session', {json: {token}});
  csrf = body.csrf;
  return body;
}

export async function resume() {
  try {
    const {body} = await request('GET', '/console/session');
    csrf = body.csrf;
    return body;
  } catch (error) {
    if (error.status === 401) return null;
    throw error;
  }
}

export async function signOut() {
  try { await request('DELETE', '/console/session'); } finally { csrf = null; }
}
