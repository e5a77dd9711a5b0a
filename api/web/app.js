// chorus web app: one ES module, no build step, no dependencies.
//
// Rules this file keeps:
// - Text from users or the server (titles, names, error messages) only ever goes into the page
//   through textContent, never innerHTML, so it can never become markup or script.
// - Every API call goes to `base`, the node the page currently talks to. When that node is gone
//   (network error, or 503 `shutting_down`) the call moves to the next cluster member and is
//   retried once there; writes carry an Idempotency-Key so the retry is applied only once.
// - The queue, now playing, history and library stay live through GET /events (SSE). Each event
//   carries its Raft index; `lastEventId` is the highest one applied, so a reconnect (to any
//   node) resumes exactly after it and nothing is applied twice.

const $ = (sel) => document.querySelector(sel);

// ---------------------------------------------------------------- state

let base = location.origin;
/** Member base URLs (`http://` + http_addr) from the latest GET /cluster, ordered by node id. */
let memberBases = [];
/** Which node answered at a base URL: the page's own origin may name a member differently
 * (`localhost` rather than `127.0.0.1`), and failover must not pick that same node again. */
const nodeAt = new Map();
let memberIds = [];
/** Bases that failed to answer lately: shown unreachable until they answer /health again. */
const deadBases = new Set();
let lastEventId = 0;
let connected = false;
let gotState = false;

let token = localStorage.getItem('chorus.token') || '';
let user = readJson(localStorage.getItem('chorus.user'));

/** Library tracks in server (upload) order, as TrackView objects. */
let library = [];
/** Queue as QueueTrack objects (sorted on render). */
let queue = [];
let nowPlaying = null;
/** Played tracks, oldest first (as the server sends them). */
let history = [];
let playlist = [];
/** Active playlist play-through: the track ids in order and the position playing. */
let playThrough = null;
/** What the player is playing: {id, title, artist, retried}. */
let current = null;

const HISTORY_MAX = 100;

function readJson(text) {
  try { return text ? JSON.parse(text) : null; } catch { return null; }
}

// Read-only hooks for WebDriver tests.
Object.defineProperty(window, 'chorus', {
  value: Object.freeze({
    get base() { return base; },
    get lastEventId() { return lastEventId; },
    get connected() { return connected; },
  }),
});

// ---------------------------------------------------------------- small helpers

/** An element with a class and text; the only way text reaches the DOM. */
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function button(cls, label, onClick) {
  const b = el('button', cls, label);
  b.type = 'button';
  b.addEventListener('click', (ev) => { ev.preventDefault(); clearError(); onClick(); });
  return b;
}

/** Seconds as m:ss, or h:mm:ss from an hour on. */
function clock(seconds) {
  const s = Number.isFinite(seconds) && seconds > 0 ? Math.floor(seconds) : 0;
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, r = s % 60;
  const pad = (n) => String(n).padStart(2, '0');
  return h ? `${h}:${pad(m)}:${pad(r)}` : `${m}:${pad(r)}`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// crypto.randomUUID exists only in secure contexts (https, localhost); a page served from a
// LAN address over http still needs keys, so fall back to getRandomValues.
function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ---------------------------------------------------------------- errors

const errorBox = $('#error');

function showError(message) {
  errorBox.textContent = message || 'Something went wrong.';
  errorBox.hidden = false;
}

function clearError() {
  errorBox.textContent = '';
  errorBox.hidden = true;
}

errorBox.addEventListener('click', clearError);
errorBox.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === 'Escape') clearError(); });

/** An API answer that was not a success: carries the server's `message`. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Runs a user action, showing any failure in #error (never an uncaught rejection). */
async function attempt(work) {
  try {
    return await work();
  } catch (e) {
    showError(e && e.message ? e.message : String(e));
    return undefined;
  }
}

// ---------------------------------------------------------------- talking to the cluster

function setBase(next) {
  base = next;
  $('#node-url').textContent = base;
  $('#docs-link').href = base + '/docs';
}

/** Marks `failed` dead and moves `base` to the next member (round robin), if it is still on it. */
function failover(failed) {
  deadBases.add(failed);
  if (base !== failed) return; // another request already moved on
  const list = memberBases.length ? memberBases : [base];
  const at = list.indexOf(failed);
  const failedId = nodeAt.get(failed);
  const start = at >= 0 ? at : Math.max(0, memberIds.indexOf(failedId));
  for (let k = 1; k <= list.length; k++) {
    const i = (start + k) % list.length;
    const candidate = list[i];
    if (failedId !== undefined && memberIds[i] === failedId) continue;
    if (candidate !== failed && !deadBases.has(candidate)) return setBase(candidate);
  }
  // Every other member failed lately too: still try the next one rather than stay put.
  const next = list[(start + 1) % list.length];
  if (next && next !== failed) setBase(next);
}

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** A network failure, as opposed to an answer from the server. */
class NetworkError extends Error {}

async function send(target, method, path, init, timeoutMs) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    return await fetch(target + path, { ...init, method, signal: abort.signal });
  } catch (e) {
    throw new NetworkError(`cannot reach the node at ${target} (${e.name === 'AbortError' ? 'timed out' : e.message})`);
  } finally {
    clearTimeout(timer);
  }
}

async function errorFrom(res) {
  const body = readJson(await res.text().catch(() => ''));
  if (body && body.message) return new ApiError(res.status, body.error, body.message);
  return new ApiError(res.status, 'http_' + res.status, `the node answered ${res.status} ${res.statusText}`.trim());
}

/**
 * One API call with failover. `json` is sent as a JSON body, `form` as multipart. Resolves to
 * the parsed JSON answer (or null), rejects with ApiError/NetworkError.
 */
async function api(method, path, { json, form, headers = {}, timeout = 10000, raw = false } = {}) {
  const h = { ...authHeaders(), ...headers };
  if (method !== 'GET' && method !== 'HEAD') h['Idempotency-Key'] = newKey(); // same key on retry
  let body;
  if (json !== undefined) { h['Content-Type'] = 'application/json'; body = JSON.stringify(json); }
  if (form) body = form;
  for (let tries = 0; ; tries++) {
    const target = base;
    let res;
    try {
      res = await send(target, method, path, { headers: h, body }, timeout);
    } catch (e) {
      if (tries > 0) throw e;
      failover(target);
      continue;
    }
    deadBases.delete(target);
    if (!res.ok) {
      const err = await errorFrom(res);
      if (tries === 0 && res.status === 503 && err.code === 'shutting_down') { failover(target); continue; }
      if (h.Authorization) forgetStaleToken(err);
      throw err;
    }
    if (raw) return res;
    const text = await res.text();
    return text ? readJson(text) : null;
  }
}

/** A token this cluster no longer accepts (expired, or signed before a reset): log out. */
function forgetStaleToken(err) {
  if (err.status === 401 && (err.code === 'invalid_token' || err.code === 'token_expired') && token) saveLogin('', null);
}

async function alive(target, timeoutMs = 1000) {
  try {
    const res = await send(target, 'GET', '/health', {}, timeoutMs);
    return res.ok;
  } catch { return false; }
}

// ---------------------------------------------------------------- account

function saveLogin(newToken, newUser) {
  token = newToken;
  user = newUser;
  if (token) {
    localStorage.setItem('chorus.token', token);
    localStorage.setItem('chorus.user', JSON.stringify(user));
  } else {
    localStorage.removeItem('chorus.token');
    localStorage.removeItem('chorus.user');
  }
  $('#whoami').textContent = user ? user.username : '';
  renderLibrary();
  attempt(loadPlaylist);
}

/** The JWT's payload (base64url JSON); the server signs, the page only reads its claims. */
function jwtClaims(jwt) {
  const part = (jwt.split('.')[1] || '').replace(/-/g, '+').replace(/_/g, '/');
  const padded = part + '='.repeat((4 - (part.length % 4)) % 4);
  const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

async function login() {
  const username = $('#username').value.trim();
  const password = $('#password').value;
  const { token: jwt } = await api('POST', '/users/login', { json: { username, password } });
  const claims = jwtClaims(jwt);
  saveLogin(jwt, { user_id: String(claims.sub), username: claims.username || username });
  $('#password').value = '';
}

async function signup() {
  const username = $('#username').value.trim();
  await api('POST', '/users/register', {
    json: { username, password: $('#password').value, email: $('#email').value.trim() },
  });
  await login();
}

$('#account-form').addEventListener('submit', (e) => { e.preventDefault(); clearError(); attempt(login); });
$('#signup').addEventListener('click', () => { clearError(); attempt(signup); });
$('#logout').addEventListener('click', () => { clearError(); playThrough = null; saveLogin('', null); });

// A stored token past its expiry would only produce 401s: drop it on load.
if (token) {
  try {
    const { exp } = jwtClaims(token);
    if (exp && exp * 1000 < Date.now()) { token = ''; user = null; }
  } catch { token = ''; user = null; }
  if (!token) { localStorage.removeItem('chorus.token'); localStorage.removeItem('chorus.user'); }
}

// ---------------------------------------------------------------- library

const searchBox = $('#search');
/** Increments per library load, so an older (slower) answer never overwrites a newer one. */
let libraryLoads = 0;

async function loadLibrary() {
  const mine = ++libraryLoads;
  const q = searchBox.value.trim();
  const tracks = await api('GET', `/tracks?q=${encodeURIComponent(q)}&limit=200`);
  if (mine !== libraryLoads) return;
  library = Array.isArray(tracks) ? tracks : [];
  renderLibrary();
}

let searchTimer;
searchBox.addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => attempt(loadLibrary), 250);
});

function matchesSearch(t) {
  const q = searchBox.value.trim().toLowerCase();
  return !q || [t.title, t.artist, t.album].some((f) => String(f || '').toLowerCase().includes(q));
}

function upsertLibrary(t) {
  const at = library.findIndex((x) => x.track_id === t.track_id);
  if (at >= 0) library[at] = t;
  else if (matchesSearch(t)) library.push(t);
  renderLibrary();
  // Playlist entries show the same metadata.
  let changed = false;
  for (const p of playlist) {
    if (p.track_id === t.track_id) { Object.assign(p, { title: t.title, artist: t.artist, album: t.album, duration: t.duration }); changed = true; }
  }
  if (changed) renderPlaylist();
}

function removeFromLibrary(trackId) {
  library = library.filter((t) => t.track_id !== trackId);
  renderLibrary();
  if (playlist.some((p) => p.track_id === trackId)) {
    playlist = playlist.filter((p) => p.track_id !== trackId);
    renderPlaylist();
  }
}

/** Rendered rows by track id, with the data they show: unchanged rows (and an open edit form) are kept. */
const libraryRows = new Map();

function renderLibrary() {
  const list = $('#library');
  const seen = new Set();
  const owner = user ? user.user_id : null;
  for (const [i, t] of library.entries()) {
    const key = JSON.stringify([t, owner]);
    let row = libraryRows.get(t.track_id);
    if (!row || row.key !== key) {
      if (row) row.li.remove();
      row = { key, li: libraryItem(t, owner) };
      libraryRows.set(t.track_id, row);
    }
    seen.add(t.track_id);
    // Move a row only when it is out of place: moving a row blurs an edit form being typed in.
    const there = list.children[i];
    if (there !== row.li) list.insertBefore(row.li, there || null);
  }
  for (const [id, row] of libraryRows) {
    if (!seen.has(id)) { row.li.remove(); libraryRows.delete(id); }
  }
  $('#library-section').classList.toggle('empty', library.length === 0);
}

/** A track's row (library or playlist): its fields and a Play button; callers add actions. */
function trackRow(t) {
  const li = el('li', 'track');
  li.dataset.trackId = t.track_id;
  const info = el('div', 'info');
  info.append(el('span', 'title', t.title), el('span', 'artist', t.artist),
    el('span', 'album', t.album), el('span', 'duration', t.duration));
  const actions = el('div', 'actions');
  actions.append(button('play', 'Play', () => { playThrough = null; playTrack(t.track_id, t.title, t.artist); }));
  return { li, info, actions };
}

function libraryItem(t, owner) {
  const { li, info, actions } = trackRow(t);
  actions.append(
    button('queue-add', 'Queue', () => attempt(() => api('POST', '/add_track', { json: { id: Number(t.track_id) } }).then(afterQueueWrite))),
    button('playlist-add', '+ Playlist', () => attempt(() => addToPlaylist(t.track_id))),
  );
  // Only the uploader may edit or delete; a server without `uploader_id` lets its 403 speak.
  if (owner && (t.uploader_id === undefined || String(t.uploader_id) === String(owner))) {
    actions.append(
      button('edit', 'Edit', () => toggleEdit(li, t)),
      button('delete', 'Delete', () => attempt(async () => {
        await api('DELETE', `/tracks/${t.track_id}`);
        removeFromLibrary(t.track_id);
      })),
    );
  }
  li.append(info, actions);
  return li;
}

/** Opens (or closes) the inline edit form of a library row. */
function toggleEdit(li, t) {
  const open = li.querySelector('form.edit-form');
  if (open) { open.remove(); return; }
  const form = el('form', 'edit-form');
  const fields = {};
  for (const name of ['title', 'artist', 'album', 'genre']) {
    const input = el('input', `edit-${name}`);
    input.name = name;
    input.placeholder = name;
    input.value = t[name] || '';
    input.setAttribute('aria-label', name);
    fields[name] = input;
    form.append(input);
  }
  const save = el('button', 'save', 'Save');
  save.type = 'submit';
  form.append(save, button('cancel', 'Cancel', () => form.remove()));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    clearError();
    attempt(async () => {
      const meta = {};
      for (const [name, input] of Object.entries(fields)) meta[name] = input.value.trim();
      const body = new FormData();
      body.append('metadata', JSON.stringify(meta));
      await api('PATCH', `/tracks/${t.track_id}`, { form: body });
      form.remove();
      // The change event updates every page; this updates this one even without the stream.
      upsertLibrary(await api('GET', `/tracks/${t.track_id}`));
    });
  });
  li.append(form);
  fields.title.focus();
}

// ---- upload: XMLHttpRequest, because fetch() cannot report upload progress.

function uploadOne(file, onProgress) {
  const title = file.name.replace(/\.mp3$/i, '');
  const key = newKey();
  const once = (target) => new Promise((resolve, reject) => {
    const form = new FormData();
    // Metadata first, so the server knows the title before the audio streams in.
    form.append('metadata', JSON.stringify({ title }));
    form.append('file', file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', target + '/tracks/upload');
    if (token) xhr.setRequestHeader('Authorization', `Bearer ${token}`);
    xhr.setRequestHeader('Idempotency-Key', key);
    xhr.upload.addEventListener('progress', (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
    xhr.addEventListener('load', () => {
      const body = readJson(xhr.responseText);
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else {
        const err = new ApiError(xhr.status, body && body.error, (body && body.message) || `upload failed: ${xhr.status}`);
        forgetStaleToken(err);
        reject(err);
      }
    });
    xhr.addEventListener('error', () => reject(new NetworkError(`cannot reach the node at ${target}`)));
    xhr.send(form);
  });
  const target = base;
  return once(target).catch((e) => {
    const gone = e instanceof NetworkError || (e.status === 503 && e.code === 'shutting_down');
    if (!gone) throw e;
    failover(target);
    onProgress(0);
    return once(base);
  });
}

async function uploadSelected() {
  const files = [...$('#upload-files').files];
  const bar = $('#upload-progress');
  const status = $('#upload-status');
  if (!files.length) { showError('Choose one or more MP3 files to upload first.'); return; }
  if (!token) { showError('Log in to upload tracks.'); return; }
  const upButton = $('#upload-button');
  upButton.disabled = true;
  let done = 0, failed = 0;
  bar.value = 0;
  try {
    for (let i = 0; i < files.length; i++) {
      status.textContent = `${done}/${files.length} uploaded, uploading ${files[i].name}…`;
      try {
        const res = await uploadOne(files[i], (f) => { bar.value = Math.round(((i + f) / files.length) * 100); });
        done++;
        // Shows the track at once even if the event stream is down.
        if (res && res.track_id) api('GET', `/tracks/${res.track_id}`).then(upsertLibrary).catch(() => {});
      } catch (e) {
        failed++;
        showError(`${files[i].name}: ${e.message}`);
      }
      bar.value = Math.round(((i + 1) / files.length) * 100);
    }
  } finally {
    upButton.disabled = false;
  }
  status.textContent = `${done}/${files.length} uploaded` + (failed ? `, ${failed} failed` : '');
  if (!failed) $('#upload-files').value = '';
}

$('#upload-button').addEventListener('click', () => { clearError(); attempt(uploadSelected); });

// ---------------------------------------------------------------- player

const audio = $('#player');

function playTrack(id, title, artist) {
  current = { id: String(id), title, artist, retried: false };
  $('#now-title').textContent = title || '';
  $('#now-artist').textContent = artist || '';
  audio.src = `${base}/play/${id}`;
  // Autoplay may be refused (no user gesture yet); the controls still work then.
  audio.play().catch(() => {});
}

// The <audio> element never says why a source failed; ask the API, which answers the error
// JSON (a 404 for a queue-only track) or shows the node is gone, then move to another node.
audio.addEventListener('error', () => {
  if (!current || !audio.getAttribute('src')) return;
  const playing = current;
  const position = audio.currentTime;
  const from = new URL(audio.src).origin;
  attempt(async () => {
    await api('GET', `/play/${playing.id}`, { headers: { Range: 'bytes=0-0' }, raw: true });
    // The audio is there, on another node than the one that failed to stream it (that node
    // died): resume there, once.
    if (current === playing && !playing.retried && base !== from) {
      playing.retried = true;
      audio.src = `${base}/play/${playing.id}`;
      audio.currentTime = position;
      audio.play().catch(() => {});
    } else if (current === playing) {
      throw new Error(`cannot play "${playing.title}": the browser could not decode the audio`);
    }
  });
});

function updateTime() {
  $('#now-time').textContent = `${clock(audio.currentTime)} / ${clock(audio.duration)}`;
}
for (const ev of ['timeupdate', 'loadedmetadata', 'durationchange', 'emptied']) audio.addEventListener(ev, updateTime);
audio.addEventListener('play', () => { $('#play-pause').textContent = 'Pause'; });
audio.addEventListener('pause', () => { $('#play-pause').textContent = 'Play'; });
audio.addEventListener('ended', () => {
  $('#play-pause').textContent = 'Play';
  if (!playThrough) return;
  playThrough.index++;
  playNextOfPlaylist();
});

$('#play-pause').addEventListener('click', () => {
  clearError();
  if (!audio.getAttribute('src')) { showError('Nothing to play yet: pick a track in the library.'); return; }
  if (audio.paused) audio.play().catch((e) => showError(`cannot play: ${e.message}`));
  else audio.pause();
});

$('#play-next').addEventListener('click', () => {
  clearError();
  attempt(async () => {
    const { now_playing: np } = await api('POST', '/play_next');
    playThrough = null;
    applyPlayed(np);
    renderQueueViews();
    playTrack(np.id, np.title, np.artist);
  });
});

// ---------------------------------------------------------------- playlist

async function loadPlaylist() {
  const hint = $('#playlist-hint');
  hint.hidden = !!user;
  if (!user) { playlist = []; renderPlaylist(); return; }
  const who = user.user_id;
  try {
    const res = await api('GET', `/playlist/${encodeURIComponent(who)}`);
    if (user && user.user_id === who) playlist = (res && res.tracks) || [];
  } catch (e) {
    if (e.status !== 404) throw e; // 404: no playlist yet, i.e. empty
    playlist = [];
  }
  renderPlaylist();
}

async function addToPlaylist(trackId) {
  if (!user) throw new Error('Log in to add tracks to your playlist.');
  await api('POST', '/playlist/add', { json: { user_id: user.user_id, track_id: String(trackId) } });
  await loadPlaylist();
}

function renderPlaylist() {
  const items = playlist.map((t) => {
    const { li, info, actions } = trackRow(t);
    actions.append(
      button('remove', 'Remove', () => attempt(async () => {
        await api('DELETE', '/playlist/remove', { json: { user_id: user.user_id, track_id: String(t.track_id) } });
        await loadPlaylist();
      })),
    );
    li.append(info, actions);
    return li;
  });
  $('#playlist').replaceChildren(...items);
}

function playNextOfPlaylist() {
  const pt = playThrough;
  if (!pt) return;
  const id = pt.ids[pt.index];
  if (id === undefined) { playThrough = null; return; }
  const t = playlist.find((p) => p.track_id === id) || { title: '', artist: '' };
  playTrack(id, t.title, t.artist);
  playThrough = pt; // playTrack does not touch it; kept explicit for the reader
}

$('#playlist-play').addEventListener('click', () => {
  clearError();
  if (!user) { showError('Log in to play your playlist.'); return; }
  if (!playlist.length) { showError('Your playlist is empty: add tracks from the library.'); return; }
  playThrough = { ids: playlist.map((t) => t.track_id), index: 0 };
  playNextOfPlaylist();
});

// ---------------------------------------------------------------- queue, now playing, history

function sortQueue() {
  queue.sort((a, b) => (b.votes - a.votes) || ((a.added_seq ?? 0) - (b.added_seq ?? 0)));
}

function upsertQueue(t) {
  const at = queue.findIndex((q) => q.id === t.id);
  if (at >= 0) queue[at] = t; else queue.push(t);
}

/** Skip votes for the playing track: `needed` is known once a skip answer or event said it. */
let skipVotes = { votes: 0, needed: null };

function renderSkipVotes() {
  const { votes, needed } = skipVotes;
  $('#skip-votes').textContent = votes
    ? (needed ? `${votes} of ${needed} want to skip` : `${votes} want to skip`)
    : '';
}

$('#skip').addEventListener('click', () => attempt(async () => {
  clearError();
  const r = await api('POST', '/skip');
  if (r.skipped) {
    skipVotes = { votes: 0, needed: r.needed };
    if (r.now_playing) applyPlayed(r.now_playing);
    renderQueueViews();
  } else {
    skipVotes = { votes: r.votes, needed: r.needed };
  }
  renderSkipVotes();
}));

function applyPlayed(p) {
  skipVotes = { votes: 0, needed: skipVotes.needed };
  queue = queue.filter((q) => q.id !== p.id);
  const last = history[history.length - 1];
  // The same play seen twice (an answer and its event) is one history entry.
  if (!last || last.id !== p.id || last.played_at !== p.played_at) history.push(p);
  if (history.length > HISTORY_MAX) history = history.slice(-HISTORY_MAX);
  nowPlaying = p;
}

function renderQueueViews() {
  sortQueue();
  $('#queue').replaceChildren(...queue.map((t) => {
    const li = el('li', 'track');
    li.dataset.id = String(t.id);
    const info = el('div', 'info');
    info.append(el('span', 'title', t.title), el('span', 'artist', t.artist), el('span', 'duration', clock(t.duration)));
    const actions = el('div', 'actions');
    const vote = (up) => attempt(() => api('POST', `/vote?id=${t.id}&up=${up}`).then(afterQueueWrite));
    actions.append(
      el('span', 'votes', t.votes),
      button('up', '▲', () => vote(true)),
      button('down', '▼', () => vote(false)),
      button('unvote', '↺', () => attempt(() => api('DELETE', `/vote?id=${t.id}`).then(afterQueueWrite))),
      button('remove', 'Remove', () => attempt(() => api('POST', '/remove_track', { json: { id: t.id } }).then(afterQueueWrite))),
    );
    actions.querySelector('.up').setAttribute('aria-label', 'vote up');
    actions.querySelector('.down').setAttribute('aria-label', 'vote down');
    actions.querySelector('.unvote').setAttribute('aria-label', 'take back my vote');
    li.append(info, actions);
    return li;
  }));
  $('#now-playing').textContent = nowPlaying
    ? (nowPlaying.artist ? `${nowPlaying.title} — ${nowPlaying.artist}` : nowPlaying.title)
    : '';
  $('#history').replaceChildren(...history.slice().reverse().map((p) => {
    const li = el('li', 'played');
    li.dataset.id = String(p.id);
    const when = el('time', 'played-at', new Date(p.played_at).toLocaleString());
    when.dateTime = p.played_at;
    li.append(el('span', 'title', p.title), el('span', 'artist', p.artist), when);
    return li;
  }));
}

/** Reads the queue over plain HTTP (ordered by the server), for when no event says otherwise. */
async function loadQueueOverHttp() {
  const [q, h] = await Promise.all([api('GET', '/queue'), api('GET', '/history')]);
  if (gotState && connected) return; // the stream is authoritative once it has spoken
  // The server's order is votes, then order of addition: the position stands in for added_seq.
  queue = (q || []).map((t, i) => ({ ...t, added_seq: i }));
  history = (h || []).slice(-HISTORY_MAX);
  nowPlaying = history.length ? history[history.length - 1] : null;
  renderQueueViews();
}

/** After a queue write: the stream shows it; without the stream, read the queue again. */
function afterQueueWrite() {
  if (!connected) return loadQueueOverHttp();
  return undefined;
}

// ---------------------------------------------------------------- live updates (SSE)

let events = null;
let reconnectTimer = null;
let failures = 0;

function setConnected(on) {
  connected = on;
  const s = $('#conn-status');
  s.textContent = on ? 'live' : 'reconnecting';
  s.classList.toggle('live', on);
}

function connectEvents() {
  clearTimeout(reconnectTimer);
  if (events) events.close();
  const url = `${base}/events${lastEventId ? `?last_event_id=${lastEventId}` : ''}`;
  const source = new EventSource(url);
  events = source;
  source.addEventListener('open', () => {
    if (events !== source) return;
    failures = 0;
    setConnected(true);
    deadBases.delete(base);
  });
  source.addEventListener('state', (e) => { if (events === source) onState(e); });
  source.addEventListener('change', (e) => { if (events === source) onChange(e); });
  source.addEventListener('error', () => {
    if (events !== source) return;
    // EventSource would retry the same URL by itself; we close it to choose the node and the
    // resume point (lastEventId) ourselves.
    source.close();
    events = null;
    setConnected(false);
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  failures++;
  const delay = Math.min(2000, 300 * 2 ** (failures - 1));
  reconnectTimer = setTimeout(async () => {
    const target = base;
    if (!(await alive(target))) failover(target);
    connectEvents();
  }, delay);
}

function eventData(e) {
  const data = readJson(e.data);
  if (!data) return null;
  if (typeof data.index !== 'number') data.index = Number(e.lastEventId) || 0;
  return data;
}

function onState(e) {
  const data = eventData(e);
  if (!data) return;
  // The whole state as of an index replaces what we have, whatever we had applied.
  gotState = true;
  lastEventId = data.index;
  queue = data.queue || [];
  history = (data.history || []).slice(-HISTORY_MAX);
  nowPlaying = data.now_playing || null;
  skipVotes = { votes: data.skip_votes || 0, needed: skipVotes.needed };
  renderQueueViews();
  renderSkipVotes();
  // Library changes are not part of `state`: read the library again.
  attempt(loadLibrary);
}

function onChange(e) {
  const data = eventData(e);
  if (!data || data.index <= lastEventId) return; // already applied: never twice
  for (const c of data.changes || []) {
    switch (c.type) {
      case 'queued':
      case 'voted': upsertQueue(c.track); break;
      case 'unqueued': queue = queue.filter((q) => q.id !== c.id); break;
      case 'played': applyPlayed(c.played); break;
      case 'cleared': queue = []; history = []; nowPlaying = null; skipVotes.votes = 0; break;
      case 'skip_voted': skipVotes = { votes: c.votes, needed: c.needed }; break;
      case 'track_added':
      case 'track_updated': upsertLibrary(c.track); break;
      case 'track_removed': removeFromLibrary(String(c.track_id)); break;
      default: break; // a newer server's change type: ignored, the next state fixes it
    }
  }
  lastEventId = data.index;
  renderQueueViews();
  renderSkipVotes();
}

// ---------------------------------------------------------------- cluster panel

let clusterBusy = false;
let lastCluster = null;

async function refreshCluster() {
  if (clusterBusy) return;
  clusterBusy = true;
  try {
    // Dead nodes that answer again become candidates for failover again.
    await Promise.all([...deadBases].map(async (b) => { if (b !== base && await alive(b, 800)) deadBases.delete(b); }));
    const asked = base;
    const view = await api('GET', '/cluster', { timeout: 3000 });
    lastCluster = view;
    if (asked === base) nodeAt.set(base, view.node_id);
    const members = (view.members || []).slice().sort((a, b) => a.id - b.id);
    memberBases = members.map((m) => memberBase(m.http_addr));
    memberIds = members.map((m) => m.id);
    members.forEach((m, i) => nodeAt.set(memberBases[i], m.id));
    renderCluster(view, true);
  } catch {
    renderCluster(lastCluster, false);
  } finally {
    clusterBusy = false;
  }
}

/** A member's base URL. A node listening on every interface names itself 0.0.0.0 (or [::]),
 * which a browser cannot call: use the host this page came from instead. */
function memberBase(httpAddr) {
  const m = /^(.*):(\d+)$/.exec(httpAddr);
  if (m && (m[1] === '0.0.0.0' || m[1] === '[::]')) return `http://${location.hostname}:${m[2]}`;
  return `http://${httpAddr}`;
}

function renderCluster(view, answered) {
  const set = (id, v) => { $(id).textContent = v === null || v === undefined ? '?' : String(v); };
  set('#cluster-node', answered ? view.node_id : `${base} (not answering)`);
  set('#cluster-term', answered ? view.term : null);
  set('#cluster-commit', answered ? view.commit_index : null);
  set('#cluster-applied', answered ? view.applied_index : null);
  if (!view) return;
  const deadIds = new Set([...deadBases].map((b) => nodeAt.get(b)));
  const rows = (view.members || []).slice().sort((a, b) => a.id - b.id).map((m) => {
    const addr = memberBase(m.http_addr);
    // What this page saw itself (a node that did not answer it) wins over the server's view.
    const failedHere = deadBases.has(addr) || deadIds.has(m.id) || (!answered && (addr === base || nodeAt.get(base) === m.id));
    const reachable = m.reachable && !failedHere;
    const tr = el('tr', answered && m.id === view.node_id ? 'self' : '');
    tr.dataset.nodeId = String(m.id);
    const link = el('a', null, m.http_addr);
    link.href = `${addr}/`;
    const addrCell = el('td', 'http');
    addrCell.append(link);
    const leader = answered && m.id === view.leader_id;
    tr.append(el('td', 'id', m.id), addrCell,
      el('td', leader ? 'role leader' : 'role', leader ? 'leader' : 'follower'),
      el('td', reachable ? 'reachable yes' : 'reachable no', reachable ? 'yes' : 'no'));
    return tr;
  });
  $('#cluster tbody').replaceChildren(...rows);
}

// ---------------------------------------------------------------- start

setBase(base);
setConnected(false);
$('#whoami').textContent = user ? user.username : '';
renderQueueViews();
refreshCluster();
setInterval(refreshCluster, 1000);
connectEvents();
attempt(loadLibrary);
attempt(loadPlaylist);
// Until the stream's first `state` arrives, show the queue as plain HTTP has it.
loadQueueOverHttp().catch(() => {});
