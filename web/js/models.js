// The models panel: the server's models, a URL, a local file, or the browser's own copy (OPFS), each with an
// optional projector (mmproj) for llama.cpp model files whose vision and audio towers are a separate file.
// Loading itself happens in the worker; this module chooses the source, shows the progress, and keeps
// S.model up to date. It also shows, before anything is loaded, whether the GPU is emulated in software, and
// the memory modes (context, text only, towers freed after each reply) with the GPU memory the app holds.

import { $, S, mb, query, secs, size } from './state.js';
import { clearError, notice, setProgress, showError, updateButtons } from './ui.js';
import { call, on } from './worker-client.js';
import { saveSettings, settings } from './settings.js';
import { renderMessages } from './chat.js';

// Hooks for other panels: loaded(info) runs after a model is loaded (diffusion.js picks the generation mode).
export const modelHooks = { loaded: [] };

// Software renderers: WebGPU through them runs on the CPU, some hundred times slower than a GPU.
const SOFTWARE_GPUS = [[/swiftshader/i, 'SwiftShader'], [/llvmpipe/i, 'llvmpipe'], [/lavapipe/i, 'lavapipe'],
  [/softpipe/i, 'softpipe'], [/basic render driver/i, 'Microsoft Basic Render Driver']];

// What the adapter says about itself: {fallback (a software adapter: isFallbackAdapter, on the adapter in
// older browsers, in adapter.info in newer ones), software (the renderer's name, or null), info}.
export function describeAdapter(adapter) {
  const i = adapter.info || {};
  const info = { vendor: i.vendor || '', architecture: i.architecture || '', device: i.device || '', description: i.description || '' };
  const fallback = !!(i.isFallbackAdapter || adapter.isFallbackAdapter);
  const text = Object.values(info).join(' ');
  const hit = SOFTWARE_GPUS.find(([re]) => re.test(text));
  return { fallback, software: hit ? hit[1] : fallback ? 'a software renderer' : null, info };
}

// Said before any model is loaded: the speed to expect on an emulated GPU (docs/PERFORMANCE.md: Gemma 3 270M
// on SwiftShader, 2 CPU cores: 73 s to load, 0.1 to 0.2 tokens/s).
export function showGpuNotice(adapter) {
  const gpu = (S.gpu = describeAdapter(adapter));
  $('gpu-notice').hidden = !gpu.software;
  if (!gpu.software) return;
  $('gpu-notice-title').textContent = `This GPU is emulated in software (${gpu.software}): models will be very slow here.`;
  $('gpu-notice-text').textContent = 'This browser runs WebGPU on the CPU, without a graphics card. On a 2-core '
    + 'machine the smallest model, Gemma 3 270M, takes over a minute to load and writes a token every 5 to 10 '
    + 'seconds (0.1 to 0.2 tokens/s); Gemma 4 models are slower still. A hardware GPU runs the same models '
    + 'hundreds of times faster: turn on hardware acceleration in the browser\'s settings, or use a computer '
    + 'with a GPU.';
}

// "GPU memory: ..." in the models panel, from a load, a reply or a "memory" event.
function showMemory(m) {
  if (!m || m.allocated_bytes == null) return;
  S.gpuMemory = m;
  const towers = (m.towers || []).map(k => (k === 'image' ? 'vision' : 'audio'));
  const held = towers.length ? ` · ${towers.join(' and ')} tower${towers.length > 1 ? 's' : ''} loaded` : '';
  $('gpu-memory').textContent = `GPU memory: ${mb(m.allocated_bytes)} (at most ${mb(m.peak_bytes)} since the model loaded)${held}`;
  $('gpu-memory').hidden = false;
}

export function selectTab(tab) {
  settings.tab = tab;
  for (const b of document.querySelectorAll('[role=tab]')) b.setAttribute('aria-selected', String(b.dataset.tab === tab));
  for (const d of document.querySelectorAll('.tab')) d.hidden = d.dataset.tab !== tab;
  $('keep-copy-label').hidden = !(tab === 'server' || tab === 'url');
}

// A server model's projector, if the server lists one (`rullama serve --model M --mmproj P`):
// `mmproj` is its URL (and `mmproj_size` its size), or {url, name, size}.
function serverMmproj(m) {
  const p = m && m.mmproj;
  if (!p) return null;
  const url = typeof p === 'string' ? p : p.url;
  if (!url) return null;
  const name = (typeof p === 'object' && p.name) || decodeURIComponent(url.split('/').pop());
  return { kind: 'url', url: new URL(url, location.href).href, name, size: typeof p === 'object' ? p.size : m.mmproj_size };
}

export async function fetchServerModels() {
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
    const mm = serverMmproj(m);
    o.textContent = `${m.name} (${where}${m.size ? ', ' + size(m.size) : ''}${mm ? ', with projector ' + mm.name : ''})` + (m.available ? '' : ' - missing');
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

export async function refreshCache() {
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
  const byKey = new Map(items.map(m => [m.key, m]));
  for (const m of items) {
    const li = document.createElement('li');
    const state = m.complete ? mb(m.size) : `${mb(m.done)} of ${mb(m.size)} downloaded`;
    li.innerHTML = '<span class="name"></span> <span class="hint"></span> ';
    li.querySelector('.name').textContent = m.name;
    const mm = m.mmproj && byKey.get(m.mmproj.key);
    li.querySelector('.hint').textContent = state + (m.role === 'mmproj' ? ' · projector (mmproj)' : '') + (mm ? ` · with ${mm.name}` : '');
    const act = document.createElement('button');
    act.type = 'button';
    if (m.role === 'mmproj') {
      // loaded with its model; only an interrupted download can be resumed on its own
      act.textContent = 'Resume download';
      act.hidden = m.complete;
      act.onclick = () => downloadOnly(m);
    } else {
      act.textContent = m.complete && (!m.mmproj || (mm && mm.complete)) ? 'Load' : 'Resume download';
      act.onclick = () => loadModel({ kind: 'cached', url: m.url, name: m.name, key: m.key,
        mmproj: m.mmproj ? { kind: 'cached', url: m.mmproj.url, name: m.mmproj.name } : null });
    }
    const del = document.createElement('button');
    del.type = 'button';
    del.textContent = 'Delete';
    del.onclick = async () => { await call('cache-delete', { key: m.key }); refreshCache(); };
    li.append(act, del);
    ul.append(li);
  }
  return items;
}

async function downloadOnly(m) {
  if (S.busy) return;
  S.busy = true;
  updateButtons();
  try {
    const d = await download(m.url, m.name, 'mmproj');
    if (!d.paused) setProgress(1, `Downloaded ${m.name} to the browser cache.`);
  } catch (e) {
    showError(e);
  } finally {
    S.busy = false;
    updateButtons();
    refreshCache();
  }
}

function addressOf(v) {
  try {
    const url = new URL(v, location.href).href;
    return { url, name: decodeURIComponent(url.split('/').pop() || url) };
  } catch {
    return null;
  }
}

function currentSource() {
  const tab = settings.tab || 'server';
  if (tab === 'server') {
    const m = S.serverModels.find(x => x.id === $('server-models').value);
    if (!m) return null;
    settings.serverModel = m.id;
    return { kind: 'url', url: new URL(m.url, location.href).href, name: m.name, mmproj: serverMmproj(m) };
  }
  if (tab === 'url') {
    const v = $('model-url').value.trim();
    if (!v) return null;
    const a = addressOf(v);
    if (!a) return { invalid: 'That is not a web address.' };
    const src = { kind: 'url', ...a, mmproj: null };
    const p = $('mmproj-url').value.trim();
    if (p) {
      const pa = addressOf(p);
      if (!pa) return { invalid: 'The projector (mmproj) address is not a web address.' };
      src.mmproj = { kind: 'url', ...pa };
    }
    return src;
  }
  if (tab === 'file') {
    const f = $('model-file').files[0];
    const p = $('mmproj-file').files[0];
    return f ? { kind: 'file', file: f, name: f.name, mmproj: p ? { kind: 'file', file: p, name: p.name } : null } : null;
  }
  return null;
}

// Download `url` into the browser's cache (resuming), with the progress shown; {key, paused, ...}.
async function download(url, name, role, mmprojUrl) {
  $('pause-download').hidden = false;
  try {
    return await call('download', { url, name, role, mmproj_url: mmprojUrl, chunk: parseInt(query.get('chunk') || '0', 10) });
  } finally {
    $('pause-download').hidden = true;
  }
}

export async function loadModel(source) {
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
    prefill_chunk: parseInt($('prefill-chunk').value, 10) || null,  // null: the device's default
    text_only: $('text-only').checked,
    release_towers: $('release-towers').checked,
    ple_on_gpu: $('ple-on-gpu').checked,
    kv_cache_type: $('kv-cache-type').value,
    name: source.name,
  };
  if (query.get('max_buffer')) options.max_buffer_size = parseInt(query.get('max_buffer'), 10);
  const t0 = performance.now();
  const mm = source.mmproj || null;
  try {
    setProgress(null, S.python ? 'Opening the model…' : 'Starting Python (Pyodide)…');
    let req;
    let mreq = null;
    if (source.kind === 'cached' || (source.kind === 'url' && $('keep-copy').checked && !$('keep-copy-label').hidden)) {
      const d = await download(source.url, source.name, 'model', mm && mm.kind !== 'file' ? mm.url : undefined);
      let paused = d.paused ? d : null;
      if (!paused && mm && mm.kind !== 'file') {
        const dm = await download(mm.url, mm.name, 'mmproj');
        if (dm.paused) paused = dm;
        else mreq = { kind: 'opfs', key: dm.key };
      }
      refreshCache();
      if (paused) {
        setProgress(paused.done ? paused.done / paused.size : 0, `Download paused at ${mb(paused.done || 0)}. It resumes from there when you load this model again.`);
        $('model-pill').textContent = 'no model';
        return;
      }
      req = { kind: 'opfs', key: d.key };
    } else {
      req = source.kind === 'file' ? { kind: 'file', file: source.file } : { kind: 'url', url: source.url };
    }
    if (mm && !mreq) mreq = mm.kind === 'file' ? { kind: 'file', file: mm.file } : { kind: 'url', url: mm.url };
    if (mreq) options.mmproj_name = mm.name;
    const info = await call('load', { ...req, mmproj: mreq, options });
    info.wall_seconds = (performance.now() - t0) / 1000;
    info.source = req.kind;
    S.model = info;
    S.lastLoad = info;
    localStorage.setItem('rullama.lastSource', JSON.stringify({ ...source, file: undefined, mmproj: mm && { ...mm, file: undefined } }));
    const media = (info.has_vision ? ' · reads images' : '') + (info.has_audio ? ' · hears audio' : '')
      + (info.text_only ? ' · text only' : '')
      + (info.ple_on_gpu ? ' · per-layer embeddings on the GPU' : '')
      + (info.kv_cache_type && info.kv_cache_type !== 'f16' ? ` · KV cache ${info.kv_cache_type}` : '')
      + (info.diffusion ? ` · diffusion, canvas ${info.diffusion.canvas_length}` : '');
    $('model-pill').textContent = `${info.name} · ${info.arch} · context ${info.max_context}${media}`;
    $('model-pill').classList.remove('muted');
    $('model-pill').title = `identity ${info.identity}\nGPU ${info.adapter.vendor} ${info.adapter.device} ${info.adapter.description}`
      + (info.mmproj ? `\nprojector ${info.mmproj}` : '');
    setProgress(1, `Ready: ${info.name}${info.mmproj ? ' with ' + info.mmproj : ''} loaded in ${info.wall_seconds.toFixed(1)} s (${mb(info.fetched)} read, ${info.tensors} tensors)`);
    showMemory(info.gpu_memory);
    $('loader').hidden = true;
    for (const fn of modelHooks.loaded) fn(info);
    $('prompt').focus();
  } catch (e) {
    $('model-pill').textContent = 'no model';
    $('progress').hidden = true;
    showError(e);
  } finally {
    S.busy = false;
    updateButtons();
    if (S.active) renderMessages();
  }
}

// .gguf files dropped on the page: a model, and its projector when one of them says "mmproj".
export function loadDroppedFiles(files) {
  const mm = files.find(f => /mmproj/i.test(f.name));
  const model = files.find(f => f !== mm) || null;
  if (!model) {
    notice(`${mm.name} is a projector (mmproj): drop it together with its model, or choose it in "Local file".`);
    return;
  }
  loadModel({ kind: 'file', file: model, name: model.name, mmproj: mm && files.length > 1 ? { kind: 'file', file: mm, name: mm.name } : null });
}

export function setupModels() {
  for (const b of document.querySelectorAll('[role=tab]')) {
    b.onclick = () => { selectTab(b.dataset.tab); saveSettings(); if (b.dataset.tab === 'cache') refreshCache(); };
  }
  $('load').onclick = () => loadModel();
  $('pause-download').onclick = () => call('pause-download');
  $('toggle-loader').onclick = () => { $('loader').hidden = !$('loader').hidden; };
  $('model-file').onchange = () => { if ($('model-file').files[0]) loadModel(); };
  // Picked after the model: load the model again with it (its kernels are compiled already).
  $('mmproj-file').onchange = () => { if ($('mmproj-file').files[0] && $('model-file').files[0]) loadModel(); };
  // Ticked: the towers go now, not only after the next reply. Each chat request carries the setting.
  $('text-only').onchange = saveSettings;
  $('release-towers').onchange = () => {
    saveSettings();
    if ($('release-towers').checked && S.model && !S.busy) call('release-towers').then(showMemory, showError);
  };
}

on('memory', showMemory);

on('boot', e => {
  $('python-pill').textContent = e.ready ? 'Python ready' : e.text + '…';
  $('python-pill').classList.toggle('muted', !e.ready);
  if (e.ready) S.python = true;
  if (S.busy && !S.model && !e.ready) setProgress(null, e.text + '…');
});

on('progress', e => {
  if (e.phase === 'weights') {
    // What this load downloads is the weights (done of total bytes). A Gemma 4 file's per-layer embedding table
    // stays in the file (a row read per token), so the file itself can be several times larger.
    const rest = e.file_size > 1.1 * e.total ? ` (of a ${size(e.file_size)} file: the rest is read as needed)` : '';
    const parts = [`${size(e.done)} of ${size(e.total)} downloaded${rest}`, `${e.tensors} tensors uploaded`];
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
  const what = e.role === 'mmproj' ? `Downloading the projector ${e.name}` : 'Downloading to the browser cache';
  setProgress(e.done / e.size, `${what}: ${size(e.done)} of ${size(e.size)}${resumed}${left}`);
  S.lastDownload = e;
});
