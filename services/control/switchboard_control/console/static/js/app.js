// The console's shell: sign-in and out, the hash router (#/calls, #/call/<sid>, #/ended,
// #/profiles[/<name>], #/settings, #/fleet), the theme, and the tab's live feed.
import * as api from './api.js';
import {Feed} from './feed.js';
import {clear} from './util.js';
import * as calls from './calls.js';
import * as call from './call.js';
import * as ended from './ended.js';
import * as profiles from './profiles.js';
import * as fleet from './fleet.js';

const $ = (id) => document.getElementById(id);
let current = null; // {name, view}
let session = null;

const feed = new Feed({
  onRows: (f) => current?.view?.onRows?.(f),
  onCall: (event, id, historyDone) => current?.view?.onCall?.(event, id, historyDone),
  onState: (state) => { $('feed-state').textContent = state ? `● ${state}` : ''; $('feed-state').dataset.state = state; },
});

function route() {
  const [, name = 'calls', ...rest] = (location.hash || '#/calls').split('/');
  return {name, arg: rest.map(decodeURIComponent).join('/') || null};
}

const VIEWS = {calls, call, ended, profiles, settings: profiles, fleet};

function render() {
  if (!api.signedIn()) return showSignIn();
  const {name, arg} = route();
  const module = VIEWS[name] || calls;
  current?.view?.unmount?.();
  const container = clear($('view'));
  for (const link of document.querySelectorAll('#nav a')) {
    link.toggleAttribute('aria-current', link.dataset.view === name || (name === 'call' && link.dataset.view === 'calls')
      || (name === 'settings' && link.dataset.view === 'profiles'));
  }
  const view = module.mount(container, {arg, name, feed, session, api});
  current = {name, view};
  feed.open(name === 'call' ? arg : null);
  if (feed.rows.size || feed.total) view.onRows?.(feed);
}

function showSignIn(message = '') {
  current?.view?.unmount?.();
  current = null;
  feed.close();
  clear($('view'));
  $('nav').hidden = true;
  $('signout').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = message;
  $('token').value = '';
  $('token').focus();
}

function signedIn(body) {
  session = body;
  $('signin').hidden = true;
  $('nav').hidden = false;
  $('signout').hidden = false;
  document.body.dataset.signedIn = 'true';
  render();
  $('main').focus();
}

$('signin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const token = $('token').value;
  $('token').value = '';
  try {
    signedIn(await api.signIn(token));
  } catch (error) {
    $('signin-error').textContent = error.status === 401 ? 'Wrong token.' : `Sign-in failed: ${error.message}`;
    $('token').focus();
  }
});

$('signout').addEventListener('click', async () => {
  feed.close();
  await api.signOut().catch(() => {});
  document.body.dataset.signedIn = 'false';
  showSignIn('Signed out.');
});

api.setSignedOutHandler((message) => showSignIn(message));

// Light, dark, or the system's choice; remembered in this browser only.
const THEMES = ['system', 'light', 'dark'];
function applyTheme(theme) {
  if (theme === 'system') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  $('theme').title = `Theme: ${theme}`;
}
$('theme').addEventListener('click', () => {
  const next = THEMES[(THEMES.indexOf(localStorage.getItem('sb-theme') || 'system') + 1) % THEMES.length];
  localStorage.setItem('sb-theme', next);
  applyTheme(next);
});
applyTheme(localStorage.getItem('sb-theme') || 'system');

window.addEventListener('hashchange', render);
window.__console = {feed, get view() { return current?.view; }};

const resumed = await api.resume();
if (resumed) signedIn(resumed); else showSignIn();
