// The page: model loading, chat, conversations (IndexedDB) and their saved engine states. All model work
// happens in worker.js; this file only talks to it by messages and keeps the page up to date.
//
// Query parameters (for testing and tuning): ?chunk=BYTES sets the OPFS download part size (default 8 MiB);
// ?max_buffer=BYTES makes the app pretend the GPU allows no larger buffer (to see the device-limit message).

const $ = id => document.getElementById(id);
const query = new URLSearchParams(location.search);

// Everything a test or a curious user may want to look at; nothing here is needed by the page itself.
const S = (window.rullamaApp = {
  python: false,
  model: null, // the load result: name, identity, max_context, has_vision, has_audio, ...
  busy: false, // loading or generating
  generating: false,
  convs: [],
  active: null, // the conversation shown
  engineConv: null, // the conversation whose context is in the engine right now
  lastReply: null, // {ids, text, stats, restored}
  lastLoad: null,
  lastError: null,
  serverModels: [],
  events: 0,
});

// ---------------------------------------------------------------------------------------------------------
// The worker

const worker = new Worker('worker.js', { type: 'module' });
let nextId = 1;
const pending = new Map();
const listeners = new Map();

worker.onmessage = ({ data }) => {
  if (data.reply !== undefined) {
    const p = pending.get(data.reply);
    pending.delete(data.reply);
    if (data.ok) p.resolve(data.value);
    else p.reject(Object.assign(new Error(data.error.message), data.error));
    return;
  }
  S.events++;
  const fn = listeners.get(data.event);
  if (fn) fn(data);
};
worker.onerror = e => showError({ kind: 'boot', message: 'The app could not start its worker.', detail: e.message || String(e) });

function call(op, args = {}, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, op, ...args }, transfer);
  });
}
const on = (event, fn) => listeners.set(event, fn);

// ---------------------------------------------------------------------------------------------------------
// IndexedDB: conversations {id, title, system, messages, updated} and snapshots {id (= conversation id),
// identity, bytes, tokens, model, saved}: the engine state after the last reply, usable only by a model
// with the same identity (configuration, weights fingerprint and context size).

const DB = {
  db: null,
  open() {
    return new Promise((resolve, reject) => {
      const r = indexedDB.open('rullama', 1);
      r.onupgradeneeded = () => {
        r.result.createObjectStore('conversations', { keyPath: 'id' });
        r.result.createObjectStore('snapshots', { keyPath: 'id' });
      };
      r.onsuccess = () => resolve((this.db = r.result));
      r.onerror = () => reject(r.error);
    });
  },
  run(store, mode, fn) {
    return new Promise((resolve, reject) => {
      const t = this.db.transaction(store, mode);
      const req = fn(t.objectStore(store));
      t.oncomplete = () => resolve(req ? req.result : undefined);
      t.onerror = t.onabort = () => reject(t.error);
    });
  },
  get: (store, key) => DB.run(store, 'readonly', s => s.get(key)),
  put: (store, value) => DB.run(store, 'readwrite', s => s.put(value)),
  del: (store, key) => DB.run(store, 'readwrite', s => s.delete(key)),
  all: store => DB.run(store, 'readonly', s => s.getAll()),
};

// ---------------------------------------------------------------------------------------------------------
// Settings (localStorage): sampling, load options, the last model source.

const SAMPLING = ['temperature', 'top_k', 'top_p', 'min_p', 'repetition_penalty', 'seed', 'max_tokens'];
const settings = JSON.parse(localStorage.getItem('rullama.settings') || '{}');

function saveSettings() {
  for (const k of SAMPLING) settings[k] = $(k).value;
  settings.max_context = $('max-context').value;
  settings.prefill_chunk = $('prefill-chunk').value;
  settings.keep_copy = $('keep-copy').checked;
  settings.url = $('model-url').value;
  localStorage.setItem('rullama.settings', JSON.stringify(settings));
}

function restoreSettings() {
  for (const k of SAMPLING) if (settings[k] !== undefined) $(k).value = settings[k];
  if (settings.max_context) $('max-context').value = settings.max_context;
  if (settings.prefill_chunk) $('prefill-chunk').value = settings.prefill_chunk;
  $('keep-copy').checked = !!settings.keep_copy;
  if (settings.url) $('model-url').value = settings.url;
  if (settings.tab) selectTab(settings.tab);
}

function samplingRequest() {
  const num = (id, int) => {
    const v = $(id).value.trim();
    if (v === '') return null;
    return int ? parseInt(v, 10) : parseFloat(v);
  };
  return {
    temperature: num('temperature') ?? 0.8,
    top_k: num('top_k', true) ?? 40,
    top_p: num('top_p') ?? 0.95,
    min_p: num('min_p') ?? 0.05,
    repetition_penalty: num('repetition_penalty') ?? 1,
    seed: num('seed', true),
    max_tokens: num('max_tokens', true) ?? 512,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Messages to the user

const mb = n => (n / 1e6).toFixed(1) + ' MB';
const secs = s => (s == null || !isFinite(s) ? '' : s < 60 ? `about ${Math.ceil(s)} s left` : `about ${Math.ceil(s / 60)} min left`);

function showError(err) {
  S.lastError = err;
  $('error').hidden = false;
  $('error').dataset.kind = err.kind || 'internal';
  $('error-message').textContent = err.message || String(err);
  $('error-detail').textContent = err.detail || '';
  $('loader').hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error').dataset.kind = '';
}

function notice(text) {
  $('notice').textContent = text;
  $('notice').hidden = !text;
}

function setProgress(fraction, text) {
  $('progress').hidden = false;
  const bar = $('progress-bar');
  if (fraction == null) bar.removeAttribute('value');
  else bar.value = Math.max(0, Math.min(1, fraction));
  $('progress-text').textContent = text;
}

on('boot', e => {
  $('python-pill').textContent = e.ready ? 'Python ready' : e.text + '…';
  $('python-pill').classList.toggle('muted', !e.ready);
  if (e.ready) S.python = true;
  if (S.busy && !S.model && !e.ready) setProgress(null, e.text + '…');
});

on('progress', e => {
  if (e.phase === 'weights') {
    const parts = [`${mb(e.fetched)} of ${mb(e.file_size)} fetched`, `${e.tensors} tensors uploaded`];
    if (e.done < e.total && e.seconds_left != null) parts.push(secs(e.seconds_left));
    setProgress(e.done / e.total, `${e.text}: ${parts.join(' · ')}`);
  } else if (e.phase === 'ready') {
    setProgress(1, `Ready: ${mb(e.fetched)} fetched, ${e.tensors} tensors uploaded`);
  } else {
    setProgress(null, e.text + '…');
  }
});

on('download', e => {
  const resumed = e.resumedFrom > 0 ? ` (resumed at ${mb(e.resumedFrom)})` : '';
  const left = e.done < e.size ? ' · ' + secs(e.secondsLeft) : '';
  setProgress(e.done / e.size, `Downloading to the browser cache: ${mb(e.done)} of ${mb(e.size)}${resumed}${left}`);
  S.lastDownload = e;
});

// ---------------------------------------------------------------------------------------------------------
// Loading a model

function selectTab(tab) {
  settings.tab = tab;
  for (const b of document.querySelectorAll('[role=tab]')) b.setAttribute('aria-selected', String(b.dataset.tab === tab));
  for (const d of document.querySelectorAll('.tab')) d.hidden = d.dataset.tab !== tab;
  $('keep-copy-label').hidden = !(tab === 'server' || tab === 'url');
}

async function fetchServerModels() {
  const sel = $('server-models');
  try {
    const r = await fetch('api/models');
    if (!r.ok) throw new Error('HTTP ' + r.status);
    S.serverModels = (await r.json()).models;
  } catch {
    S.serverModels = [];
  }
  sel.textContent = '';
  for (const m of S.serverModels) {
    const o = document.createElement('option');
    o.value = m.id;
    const where = m.source === 'ollama' ? 'Ollama' : 'served';
    o.textContent = `${m.name} (${where}${m.size ? ', ' + mb(m.size) : ''})` + (m.available ? '' : ' - missing');
    o.disabled = !m.available;
    sel.append(o);
  }
  if (!S.serverModels.length) {
    const o = document.createElement('option');
    o.textContent = 'This server lists no models';
    o.value = '';
    sel.append(o);
    if (!settings.tab) selectTab('url');
  }
  if (settings.serverModel && S.serverModels.some(m => m.id === settings.serverModel)) sel.value = settings.serverModel;
}

async function refreshCache() {
  let items = [];
  try {
    items = await call('cache-list');
  } catch {
    items = [];
  }
  const ul = $('cache-list');
  ul.textContent = '';
  if (!items.length) {
    ul.innerHTML = '<li class="hint">Nothing cached yet. Tick "Keep a copy in this browser" when loading from a server or URL.</li>';
    return items;
  }
  for (const m of items) {
    const li = document.createElement('li');
    const state = m.complete ? mb(m.size) : `${mb(m.done)} of ${mb(m.size)} downloaded`;
    li.innerHTML = '<span class="name"></span> <span class="hint"></span> ';
    li.querySelector('.name').textContent = m.name;
    li.querySelector('.hint').textContent = state;
    const act = document.createElement('button');
    act.type = 'button';
    act.textContent = m.complete ? 'Load' : 'Resume download';
    act.onclick = () => loadModel({ kind: 'cached', url: m.url, name: m.name, key: m.key });
    const del = document.createElement('button');
    del.type = 'button';
    del.textContent = 'Delete';
    del.onclick = async () => { await call('cache-delete', { key: m.key }); refreshCache(); };
    li.append(act, del);
    ul.append(li);
  }
  return items;
}

function currentSource() {
  const tab = settings.tab || 'server';
  if (tab === 'server') {
    const m = S.serverModels.find(x => x.id === $('server-models').value);
    if (!m) return null;
    settings.serverModel = m.id;
    return { kind: 'url', url: new URL(m.url, location.href).href, name: m.name };
  }
  if (tab === 'url') {
    const v = $('model-url').value.trim();
    if (!v) return null;
    let url;
    try {
      url = new URL(v, location.href).href;
    } catch {
      return { invalid: 'That is not a web address.' };
    }
    return { kind: 'url', url, name: decodeURIComponent(url.split('/').pop() || url) };
  }
  if (tab === 'file') {
    const f = $('model-file').files[0];
    return f ? { kind: 'file', file: f, name: f.name } : null;
  }
  return null;
}

async function loadModel(source) {
  if (S.busy) return;
  source = source || currentSource();
  if (!source) return showError({ kind: 'input', message: 'Choose a model first.' });
  if (source.invalid) return showError({ kind: 'input', message: source.invalid });
  saveSettings();
  clearError();
  notice('');
  S.busy = true;
  S.model = null;
  S.engineConv = null;
  updateButtons();
  $('model-pill').textContent = 'loading…';
  $('model-pill').classList.add('muted');
  const options = {
    max_context: parseInt($('max-context').value, 10) || 2048,
    prefill_chunk: parseInt($('prefill-chunk').value, 10) || 64,
    name: source.name,
  };
  if (query.get('max_buffer')) options.max_buffer_size = parseInt(query.get('max_buffer'), 10);
  const t0 = performance.now();
  try {
    setProgress(null, S.python ? 'Opening the model…' : 'Starting Python (Pyodide)…');
    let req;
    if (source.kind === 'cached' || (source.kind === 'url' && $('keep-copy').checked && !$('keep-copy-label').hidden)) {
      $('pause-download').hidden = false;
      const d = await call('download', { url: source.url, name: source.name, chunk: parseInt(query.get('chunk') || '0', 10) });
      $('pause-download').hidden = true;
      refreshCache();
      if (d.paused) {
        setProgress(d.done ? d.done / d.size : 0, `Download paused at ${mb(d.done || 0)}. It resumes from there when you load this model again.`);
        $('model-pill').textContent = 'no model';
        return;
      }
      req = { kind: 'opfs', key: d.key };
    } else {
      req = source.kind === 'file' ? { kind: 'file', file: source.file } : { kind: 'url', url: source.url };
    }
    const info = await call('load', { ...req, options });
    info.wall_seconds = (performance.now() - t0) / 1000;
    info.source = req.kind;
    S.model = info;
    S.lastLoad = info;
    localStorage.setItem('rullama.lastSource', JSON.stringify({ ...source, file: undefined }));
    $('model-pill').textContent = `${info.name} · ${info.arch} · context ${info.max_context}`;
    $('model-pill').classList.remove('muted');
    $('model-pill').title = `identity ${info.identity}\nGPU ${info.adapter.vendor} ${info.adapter.device} ${info.adapter.description}`;
    setProgress(1, `Ready: ${info.name} loaded in ${info.wall_seconds.toFixed(1)} s (${mb(info.fetched)} read, ${info.tensors} tensors)`);
    $('loader').hidden = true;
    $('prompt').focus();
  } catch (e) {
    $('pause-download').hidden = true;
    $('model-pill').textContent = 'no model';
    $('progress').hidden = true;
    showError(e);
  } finally {
    S.busy = false;
    updateButtons();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Conversations

function newConversation() {
  const c = { id: crypto.randomUUID(), title: 'New chat', system: '', messages: [], updated: Date.now() };
  S.convs.unshift(c);
  return c;
}

async function saveConversation(c) {
  c.updated = Date.now();
  await DB.put('conversations', c);
  renderConversations();
}

function setActive(c) {
  S.active = c;
  localStorage.setItem('rullama.active', c.id);
  $('system').value = c.system || '';
  renderConversations();
  renderMessages();
  notice('');
}

function renderConversations() {
  const ul = $('conversations');
  ul.textContent = '';
  for (const c of [...S.convs].sort((a, b) => b.updated - a.updated)) {
    const li = document.createElement('li');
    li.classList.toggle('active', c === S.active);
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'conv';
    b.textContent = c.title;
    b.onclick = () => { if (!S.generating) setActive(c); };
    const del = document.createElement('button');
    del.type = 'button';
    del.className = 'del';
    del.title = 'Delete this conversation';
    del.textContent = '×';
    del.onclick = async () => {
      if (S.generating) return;
      S.convs = S.convs.filter(x => x !== c);
      await DB.del('conversations', c.id);
      await DB.del('snapshots', c.id);
      if (S.engineConv === c.id) S.engineConv = null;
      if (S.active === c) setActive(S.convs[0] || newConversation());
      else renderConversations();
    };
    li.append(b, del);
    ul.append(li);
  }
}

// Control characters (a random test model emits byte tokens 0x00-0x1f) shown as their Unicode pictures
// rather than as empty boxes; newlines and tabs stay.
const visible = t => t.replace(/[\x00-\x08\x0b-\x1f]/g, ch => String.fromCharCode(0x2400 + ch.charCodeAt(0)));

function messageElement(m) {
  const div = document.createElement('div');
  div.className = 'msg ' + m.role;
  const who = document.createElement('div');
  who.className = 'who';
  who.textContent = m.role === 'user' ? 'You' : 'Model';
  const body = document.createElement('div');
  body.className = 'body';
  body.textContent = visible(m.content);
  div.append(who, body);
  if (m.meta) {
    const meta = document.createElement('div');
    meta.className = 'meta';
    meta.textContent = m.meta;
    div.append(meta);
  }
  return div;
}

function renderMessages() {
  const box = $('messages');
  box.textContent = '';
  const c = S.active;
  if (!c.messages.length) {
    const p = document.createElement('p');
    p.className = 'empty';
    p.textContent = S.model ? 'Write a message to start.' : 'Load a model, then write a message.';
    box.append(p);
  }
  for (const m of c.messages) box.append(messageElement(m));
  box.scrollTop = box.scrollHeight;
  updateButtons();
}

function updateButtons() {
  const ready = !!S.model && !S.busy;
  $('send').disabled = !ready;
  $('regenerate').disabled = !ready || !S.active || !S.active.messages.some(m => m.role === 'user');
  $('stop').disabled = !S.generating;
  $('load').disabled = S.busy;
  $('new-chat').disabled = S.generating;
}

function metaLine(st) {
  const why = { stop: 'finished', length: 'max tokens reached', context: 'context full', stopped: 'stopped' }[st.finish_reason] || st.finish_reason;
  return `${st.generated_tokens} tokens · ${st.generate_tps.toFixed(1)} tokens/s · ${why}`;
}

function statusLine(st, restored) {
  const parts = [
    `${st.generate_tps.toFixed(1)} tokens/s`,
    `prompt ${st.prompt_tokens} tokens` + (st.prompt_tps ? ` at ${st.prompt_tps.toFixed(1)} tokens/s` : ''),
    `context ${st.context} / ${st.max_context}`,
  ];
  // The CPU's share of a decode step (Python encoding and submitting the GPU work): the rest is GPU time.
  if (st.host && st.host.steps) parts.push(`host ${st.host.host_ms.toFixed(2)} of ${st.host.wall_ms.toFixed(1)} ms per token`);
  if (restored) parts.push(`resumed from the saved state (${restored} tokens not re-read)`);
  return parts.join(' · ');
}

// Put the engine on conversation `c`: restore its snapshot when it was made by this very model, otherwise
// start empty (the chat call then reads the whole conversation as its prompt).
async function ensureContext(c) {
  if (S.engineConv === c.id) return 0;
  S.engineConv = null;
  const snap = await DB.get('snapshots', c.id);
  if (snap && snap.identity === S.model.identity) {
    try {
      const r = await call('restore', { bytes: snap.bytes });
      S.engineConv = c.id;
      return r.context;
    } catch (e) {
      console.warn('snapshot not restored:', e.message);
    }
  }
  await call('new-chat');
  S.engineConv = c.id;
  return 0;
}

async function reply() {
  const c = S.active;
  c.system = $('system').value;
  const messages = (c.system.trim() ? [{ role: 'system', content: c.system }] : []).concat(
    c.messages.map(m => ({ role: m.role, content: m.content })));
  S.busy = S.generating = true;
  updateButtons();
  clearError();
  const m = { role: 'assistant', content: '' };
  const el = messageElement(m);
  el.classList.add('streaming');
  const box = $('messages');
  box.append(el);
  const body = el.querySelector('.body');
  const ids = [];
  let restored = 0;
  S.streaming = { n: 0 };
  on('token', e => {
    if (e.id >= 0) ids.push(e.id);
    S.streaming.n = e.n;
    m.content += e.text;
    body.textContent = visible(m.content);
    box.scrollTop = box.scrollHeight;
    $('status').textContent = `generating · ${e.n} tokens · ${e.generate_tps.toFixed(1)} tokens/s · context ${e.context} / ${e.max_context}`;
  });
  try {
    restored = await ensureContext(c);
    const st = await call('chat', { messages, request: samplingRequest() });
    m.content = st.text;
    m.meta = metaLine(st);
    el.classList.remove('streaming');
    el.replaceWith(messageElement(m));
    c.messages.push(m);
    S.lastReply = { ids, text: st.text, stats: st, restored };
    $('status').textContent = statusLine(st, restored);
    await saveConversation(c);
    await saveSnapshot(c, st);
  } catch (e) {
    el.remove();
    S.lastReply = { ids, text: m.content, error: e, restored };
    showError(e);
    S.engineConv = null; // unknown state: the next reply re-reads the conversation
  } finally {
    S.busy = S.generating = false;
    S.streaming = null;
    updateButtons();
  }
}

async function saveSnapshot(c, st) {
  try {
    const snap = await call('save');
    if (!snap) return;
    await DB.put('snapshots', { id: c.id, identity: snap.identity, bytes: snap.bytes, tokens: st.context, model: S.model.name, saved: Date.now() });
    S.lastSnapshot = { id: c.id, bytes: snap.bytes.length, tokens: st.context };
  } catch (e) {
    console.warn('snapshot not saved:', e.message); // the conversation is saved; it will be re-read later
  }
}

async function send(ev) {
  ev && ev.preventDefault();
  const text = $('prompt').value;
  if (!text.trim() || S.busy) return;
  if (!S.model) return notice('Load a model first.');
  const c = S.active;
  c.messages.push({ role: 'user', content: text });
  if (c.title === 'New chat') c.title = text.trim().slice(0, 40);
  $('prompt').value = '';
  renderMessages();
  await saveConversation(c);
  await reply();
}

async function regenerate() {
  if (S.busy || !S.model) return;
  const c = S.active;
  while (c.messages.length && c.messages[c.messages.length - 1].role === 'assistant') c.messages.pop();
  if (!c.messages.length) return;
  renderMessages();
  await saveConversation(c);
  await reply();
}

// ---------------------------------------------------------------------------------------------------------
// Attachments and drag and drop

function attach(file) {
  const isImage = file.type.startsWith('image/');
  const isAudio = /^audio\/(wav|x-wav|wave|vnd\.wave)$/.test(file.type) || /\.wav$/i.test(file.name);
  if (!isImage && !isAudio) return notice(`${file.name}: only images and WAV audio can be attached.`);
  const what = isImage ? 'image' : 'audio';
  if (!S.model) return notice(`Load a model first: ${file.name} was not attached.`);
  const has = isImage ? S.model.has_vision : S.model.has_audio;
  if (!has) return notice(`This model has no ${what} input, so ${file.name} was not attached.`);
  notice(`This version of the app cannot send ${what} input to the model yet, so ${file.name} was not attached.`);
}

function onDrop(ev) {
  ev.preventDefault();
  document.body.classList.remove('dragging');
  const files = [...(ev.dataTransfer ? ev.dataTransfer.files : [])];
  for (const f of files) {
    if (/\.gguf$/i.test(f.name)) loadModel({ kind: 'file', file: f, name: f.name });
    else attach(f);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Start-up

async function checkWebGPU() {
  if (!('gpu' in navigator) || !navigator.gpu) {
    return { kind: 'no-webgpu', message: 'This browser cannot run models: WebGPU is not available. Use a recent Chrome or Edge with WebGPU turned on.', detail: 'navigator.gpu is missing' };
  }
  try {
    const a = await navigator.gpu.requestAdapter();
    if (!a) return { kind: 'no-webgpu', message: 'This browser cannot run models: WebGPU is turned on but no GPU adapter is available (the GPU may be blocked or unsupported).', detail: 'requestAdapter() returned null' };
  } catch (e) {
    return { kind: 'no-webgpu', message: 'This browser cannot run models: asking for a GPU adapter failed.', detail: String(e) };
  }
  return null;
}

async function start() {
  for (const b of document.querySelectorAll('[role=tab]')) b.onclick = () => { selectTab(b.dataset.tab); saveSettings(); if (b.dataset.tab === 'cache') refreshCache(); };
  selectTab('server');
  restoreSettings();
  $('load').onclick = () => loadModel();
  $('pause-download').onclick = () => call('pause-download');
  $('toggle-loader').onclick = () => { $('loader').hidden = !$('loader').hidden; };
  $('composer').onsubmit = send;
  $('prompt').onkeydown = e => { if (e.key === 'Enter' && !e.shiftKey) send(e); };
  $('stop').onclick = () => call('stop');
  $('regenerate').onclick = regenerate;
  $('new-chat').onclick = () => { setActive(newConversation()); };
  $('system').onchange = () => { S.active.system = $('system').value; saveConversation(S.active); };
  $('attach').onclick = () => $('attach-file').click();
  $('attach-file').onchange = () => { for (const f of $('attach-file').files) attach(f); $('attach-file').value = ''; };
  $('model-file').onchange = () => { if ($('model-file').files[0]) loadModel(); };
  for (const k of SAMPLING) $(k).onchange = saveSettings;
  document.addEventListener('dragover', e => { e.preventDefault(); document.body.classList.add('dragging'); });
  document.addEventListener('dragleave', e => { if (!e.relatedTarget) document.body.classList.remove('dragging'); });
  document.addEventListener('drop', onDrop);

  await DB.open();
  S.convs = await DB.all('conversations');
  const activeId = localStorage.getItem('rullama.active');
  setActive(S.convs.find(c => c.id === activeId) || S.convs.sort((a, b) => b.updated - a.updated)[0] || newConversation());

  const gpuProblem = await checkWebGPU();
  if (gpuProblem) {
    showError(gpuProblem);
    $('load').disabled = true;
    $('python-pill').textContent = 'no WebGPU';
    await fetchServerModels(); // still show what this server offers
    return;
  }
  call('boot').catch(showError); // start Python now, so that it is ready when a model is chosen
  await Promise.all([fetchServerModels(), refreshCache()]);
  S.started = true;
}

start().catch(e => showError({ kind: 'internal', message: 'The app could not start.', detail: String(e && e.stack || e) }));
