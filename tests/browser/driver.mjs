// Drives the web app in headless Chromium (Debian's /usr/bin/chromium, WebGPU on SwiftShader) with npm
// playwright-core, and reports what the page showed. tests/browser/test_browser.py runs one scenario per
// call and makes the assertions (it also computes the native outputs to compare with).
//
// Usage: node tests/browser/driver.mjs '{"scenario": "tiny", "url": "http://127.0.0.1:PORT/", "artifacts": DIR, ...}'
// Prints progress lines, then one line `RESULT:{json}`. Screenshots go to <artifacts>/<scenario>-NN-<step>.png.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const here = path.dirname(new URL(import.meta.url).pathname);
const require = createRequire(path.resolve(here, '../../web/package.json'));
const { chromium } = require('playwright-core');

const cfg = JSON.parse(process.argv[2]);
const LONG = (cfg.timeout_s || 1500) * 1000; // model loads take minutes on a software GPU
const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s]`, ...a);
fs.mkdirSync(cfg.artifacts, { recursive: true });
let shotNo = 0;

const profiles = [];
async function launch({ webgpu = true, extraArgs = [] } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rullama-chromium-'));
  profiles.push(dir);
  const args = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--no-first-run', '--disable-quic', ...extraArgs];
  if (webgpu) args.unshift('--enable-unsafe-webgpu');
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: '/usr/bin/chromium', headless: true, args,
    viewport: { width: 1280, height: 760 } });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('pageerror', e => log('[pageerror]', e.message));
  page.on('console', m => { if (m.type() === 'error' || m.type() === 'warning') log('[console]', m.text()); });
  return { ctx, page };
}

async function shot(page, step) {
  shotNo += 1;
  const file = path.join(cfg.artifacts, `${cfg.scenario}-${String(shotNo).padStart(2, '0')}-${step}.png`);
  await page.screenshot({ path: file });
  return file;
}

const app = (page, fn, arg) => page.evaluate(fn, arg);
const until = (page, fn, arg, timeout = LONG) => page.waitForFunction(fn, arg, { timeout, polling: 250 });

async function open(page, url) {
  await page.goto(url);
  await until(page, () => window.rullamaApp && window.rullamaApp.started && window.rullamaApp.python);
  log('page ready (Python started)');
}

async function setSampling(page, { temperature = 0, max_tokens = 8 } = {}) {
  await page.fill('#temperature', String(temperature));
  await page.fill('#max_tokens', String(max_tokens));
}

async function waitLoaded(page) {
  await until(page, () => !window.rullamaApp.busy && (window.rullamaApp.model || window.rullamaApp.lastError));
  const r = await app(page, () => ({ model: window.rullamaApp.model, error: window.rullamaApp.lastError }));
  if (r.error) log('load error', JSON.stringify(r.error));
  else log('loaded', r.model.name, JSON.stringify(r.model.seconds));
  return r;
}

// The loader panel hides itself once a model is loaded; "Model…" brings it back.
async function showLoader(page) {
  if (await page.isHidden('#loader')) await page.click('#toggle-loader');
}

async function loadFromServer(page, modelId, { progressShot } = {}) {
  await showLoader(page);
  await page.click('[role=tab][data-tab=server]');
  if (modelId) await page.selectOption('#server-models', modelId);
  await app(page, () => { window.rullamaApp.lastError = null; });
  await page.click('#load');
  if (progressShot) {
    try {
      await until(page, () => /tensors uploaded|Compiling/.test(document.getElementById('progress-text').textContent), null, 120000);
      await shot(page, progressShot);
    } catch { /* the load went past the weights phase before we looked */ }
  }
  return waitLoaded(page);
}

async function send(page, text, sampling) {
  if (sampling) await setSampling(page, sampling);
  // Forget the previous reply's state, so that waits below see only this one.
  await app(page, () => { window.rullamaApp.lastReply = null; window.rullamaApp.streaming = null; });
  await page.fill('#prompt', text);
  await page.click('#send');
}

async function reply(page) {
  await until(page, () => window.rullamaApp.lastReply && !window.rullamaApp.busy);
  const r = await app(page, () => window.rullamaApp.lastReply);
  log('reply', JSON.stringify({ ids: r.ids, stats: r.stats && { p: r.stats.prompt_tokens, n: r.stats.generated_tokens, f: r.stats.finish_reason }, restored: r.restored }));
  return r;
}

async function chat(page, text, sampling) {
  await send(page, text, sampling);
  return reply(page);
}

const shownMessages = page => app(page, () => [...document.querySelectorAll('#messages .msg')].map(d => ({
  role: d.classList.contains('user') ? 'user' : 'assistant', text: d.querySelector('.body').textContent })));

const forgetError = page => app(page, () => { window.rullamaApp.lastError = null; });

async function shownError(page) {
  await until(page, () => window.rullamaApp.lastError && !window.rullamaApp.busy && !document.getElementById('error').hidden, null, LONG);
  return app(page, () => ({ kind: document.getElementById('error').dataset.kind, message: document.getElementById('error-message').textContent }));
}

async function shownChatError(page) {
  await until(page, () => window.rullamaApp.lastError && !window.rullamaApp.busy && !document.getElementById('chat-error').hidden, null, LONG);
  return app(page, () => ({ kind: document.getElementById('chat-error').dataset.kind, message: document.getElementById('chat-error-message').textContent }));
}

async function snapshotSaved(page, tokens) {
  await until(page, n => window.rullamaApp.lastSnapshot && window.rullamaApp.lastSnapshot.tokens === n, tokens, 300000);
}

// -- images: drop, paste, pick ------------------------------------------------------------------------------

// {name, mimeType, path | b64} -> what the page's File constructor takes
const fileSpec = f => ({ name: f.name, mimeType: f.mimeType, b64: f.b64 || fs.readFileSync(f.path).toString('base64') });

// A DataTransfer holding `files`, made in the page (drop and paste events carry one).
const dataTransfer = (page, files) => page.evaluateHandle(fsIn => {
  const dt = new DataTransfer();
  for (const f of fsIn) dt.items.add(new File([Uint8Array.from(atob(f.b64), c => c.charCodeAt(0))], f.name, { type: f.mimeType }));
  return dt;
}, files.map(fileSpec));

async function dropFiles(page, selector, files) {
  const dt = await dataTransfer(page, files);
  await page.dispatchEvent(selector, 'dragover', { dataTransfer: dt });
  await page.dispatchEvent(selector, 'drop', { dataTransfer: dt });
}

async function pasteFiles(page, selector, files) {
  const dt = await dataTransfer(page, files);
  await page.evaluate(({ sel, dt }) => {
    document.querySelector(sel).dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
  }, { sel: selector, dt });
}

const pickFiles = (page, files) => page.setInputFiles('#attach-file', files.map(f => ({ name: f.name, mimeType: f.mimeType, buffer: Buffer.from(fileSpec(f).b64, 'base64') })));

const composerThumbs = page => app(page, () => [...document.querySelectorAll('#attachments .thumb')].map(t => t.querySelector('figcaption').textContent));

async function thumbsAre(page, n) {
  await until(page, k => document.querySelectorAll('#attachments .thumb').length === k, n, 30000);
  return composerThumbs(page);
}

// The messages shown, with their images (name, and whether the thumbnail decoded: naturalWidth > 0).
const shownWithImages = page => app(page, async () => {
  const out = [];
  for (const d of document.querySelectorAll('#messages .msg')) {
    const imgs = [...d.querySelectorAll('.thumbs img')];
    await Promise.all(imgs.map(i => (i.complete ? null : new Promise(r => { i.onload = i.onerror = r; }))));
    out.push({ role: d.classList.contains('user') ? 'user' : 'assistant', text: d.querySelector('.body').textContent,
      images: imgs.map(i => ({ name: i.alt, width: i.naturalWidth })) });
  }
  return out;
});

// The active conversation as stored in IndexedDB (what a reload shows): roles, texts, image names and sizes,
// audio clips (name, seconds, whether blob and pcm are Blobs).
const storedConversation = page => app(page, () => new Promise((resolve, reject) => {
  const r = indexedDB.open('rullama');
  r.onsuccess = () => {
    const q = r.result.transaction('conversations').objectStore('conversations').get(window.rullamaApp.active.id);
    q.onsuccess = () => resolve(q.result.messages.map(m => ({ role: m.role, content: m.content,
      images: (m.images || []).map(i => ({ name: i.name, size: i.blob.size, blob: i.blob instanceof Blob })),
      audio: (m.audio || []).map(a => ({ name: a.name, seconds: a.seconds, size: a.blob.size, blob: a.blob instanceof Blob,
        pcm: a.pcm ? a.pcm.size : null })) })));
    q.onerror = () => reject(q.error);
  };
  r.onerror = () => reject(r.error);
}));

// -- audio clips ------------------------------------------------------------------------------------------

// The clips shown under `sel` (the composer's, or a message's): name, duration text, play button, and the
// <audio> element's own duration once its metadata loaded (a blob the browser can play).
const clipsShown = (page, sel = '#attachments .clip') => app(page, async s => {
  const out = [];
  for (const f of document.querySelectorAll(s)) {
    const a = f.querySelector('audio');
    if (a && a.readyState < 1) {
      await new Promise(r => { a.addEventListener('loadedmetadata', r, { once: true }); a.addEventListener('error', r, { once: true }); setTimeout(r, 5000); });
    }
    out.push({ name: f.querySelector('.name').textContent, duration: f.querySelector('.duration').textContent,
      play: !!f.querySelector('button.play'), removable: !!f.querySelector('.remove'),
      audioDuration: a && isFinite(a.duration) ? a.duration : null });
  }
  return out;
}, sel);

async function clipsAre(page, n) {
  await until(page, k => document.querySelectorAll('#attachments .clip').length === k, n, 60000);
  const shown = await clipsShown(page);
  const pending = await app(page, () => window.rullamaApp.pending.filter(a => a.kind === 'audio').map(a => ({ name: a.name, seconds: a.seconds, size: a.size, pcm: a.pcm ? a.pcm.size : null })));
  return shown.map((c, i) => ({ ...c, ...pending[i] }));
}

// The messages shown with their clips.
const shownWithClips = page => app(page, () => [...document.querySelectorAll('#messages .msg')].map((d, i) => ({
  role: d.classList.contains('user') ? 'user' : 'assistant', text: d.querySelector('.body').textContent, i })))
  .then(async msgs => {
    for (const m of msgs) m.clips = await clipsShown(page, `#messages .msg:nth-child(${m.i + 1}) .clip`);
    return msgs;
  });

const mediaLog = page => app(page, () => window.rullamaApp.mediaEvents);

async function loadWithMmproj(page, modelUrl, mmprojUrl) {
  await showLoader(page);
  await page.click('[role=tab][data-tab=url]');
  await page.fill('#model-url', modelUrl);
  await page.fill('#mmproj-url', mmprojUrl);
  await forgetError(page);
  await page.click('#load');
  return waitLoaded(page);
}

// Images with a text-only model (loaded, in an empty conversation): refused in a sentence (drop, paste, pick)
// with the typed text kept; the composer's thumbnails (the page told the model reads images) are removable, go to
// Python with the message and come back to the composer with its text when Python says the model has no vision
// tower; a clip gets the engine's sentence; the vision projector field and its errors (last: they are failed loads).
async function imagesWithATextModel(page, prompt) {
  const out = {};
  const [png, jpg, tall] = cfg.images;
  await page.fill('#prompt', prompt);
  out.refused = {};
  await dropFiles(page, '#prompt', [png]);
  out.refused.drop = await page.textContent('#notice');
  await pasteFiles(page, '#prompt', [jpg]);
  out.refused.paste = await page.textContent('#notice');
  await pickFiles(page, [tall]);
  out.refused.pick = await page.textContent('#notice');
  out.refused.prompt = await page.inputValue('#prompt');
  out.refused.thumbs = await composerThumbs(page);
  await shot(page, 'refused');

  // As if the model read images: the page attaches them, and Python has the last word.
  await app(page, () => { window.rullamaApp.model.has_vision = true; });
  await dropFiles(page, '#prompt', [png]);
  await thumbsAre(page, 1);
  await pasteFiles(page, '#prompt', [jpg]);
  await thumbsAre(page, 2);
  await pickFiles(page, [tall]);
  out.attached = await thumbsAre(page, 3);
  await shot(page, 'three-attached');
  await page.click(`#attachments .thumb:nth-child(2) .remove`);
  out.after_remove = await thumbsAre(page, 2);
  await shot(page, 'one-removed');
  await page.click('#attachments .thumb:first-child img');
  await until(page, () => document.getElementById('viewer').open && document.getElementById('viewer-img').naturalWidth > 0, null, 10000);
  await shot(page, 'viewer');
  await page.click('#viewer');
  await setSampling(page, { temperature: 0, max_tokens: cfg.max_tokens });
  await app(page, () => { window.rullamaApp.lastReply = null; });
  await page.click('#send');
  await until(page, () => window.rullamaApp.lastReply && !window.rullamaApp.busy);
  out.sent = await app(page, () => {
    const S = window.rullamaApp;
    return { error: { kind: S.lastReply.error.kind, message: S.lastReply.error.message },
      restoredToComposer: !!S.lastReply.restoredToComposer, shownError: document.getElementById('chat-error-message').textContent,
      loaderOpened: !document.getElementById('loader').hidden };
  });
  out.sent.prompt = await page.inputValue('#prompt');
  out.sent.thumbs = await composerThumbs(page);
  out.sent.shown = await shownWithImages(page);
  out.sent.stored = await storedConversation(page);
  await shot(page, 'no-vision-error');

  // The same text, without the images, is answered as usual.
  await app(page, () => { for (const b of document.querySelectorAll('#attachments .remove')) b.click(); });
  await thumbsAre(page, 0);
  out.text_reply = await chat(page, prompt, { temperature: 0, max_tokens: cfg.max_tokens });
  await shot(page, 'text-reply');

  // A clip for this model (as if it heard audio): the engine's sentence; the text and the clip stay.
  await app(page, () => { window.rullamaApp.model.has_audio = true; });
  await forgetError(page);
  await dropFiles(page, '#prompt', [cfg.clip]);
  await clipsAre(page, 1);
  await page.fill('#prompt', prompt);
  await app(page, () => { window.rullamaApp.lastReply = null; });
  await page.click('#send');
  await until(page, () => window.rullamaApp.lastReply && !window.rullamaApp.busy);
  out.no_audio = { ...(await shownChatError(page)), prompt: await page.inputValue('#prompt'),
    clips: (await clipsAre(page, 1)).map(c => c.name), shown: (await shownMessages(page)).length };
  await shot(page, 'no-audio-error');
  await page.click('#attachments .clip .remove');
  await clipsAre(page, 0);
  out.no_audio.error_cleared = await page.isHidden('#chat-error');

  // The vision projector: missing, then a file that is not one.
  out.mmproj = {};
  for (const [name, url] of [['missing', 'models/missing.mmproj.gguf'], ['not_projector', 'models/default.gguf']]) {
    await loadWithMmproj(page, 'models/default.gguf', url);
    out.mmproj[name] = await shownError(page);
    await shot(page, 'mmproj-' + name);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------

const scenarios = {
  // Load the tiny model over Range, greedy reply, attachments, stop, then reload and resume; then images and a
  // clip with this text-only model.
  async tiny() {
    const { ctx, page } = await launch();
    const out = {};
    await open(page, cfg.url);
    // Before any model is loaded: the notice that this GPU (SwiftShader here) is emulated, with the speed to expect.
    out.gpu_notice = await app(page, () => ({ shown: !document.getElementById('gpu-notice').hidden,
      title: document.getElementById('gpu-notice-title').textContent, text: document.getElementById('gpu-notice-text').textContent,
      gpu: window.rullamaApp.gpu, model: window.rullamaApp.model }));
    out.gpu_notice.screenshot = await shot(page, 'started');
    out.load1 = await loadFromServer(page, 'default', { progressShot: 'loading' });
    await showLoader(page);
    out.gpu_memory = await app(page, () => ({ shown: !document.getElementById('gpu-memory').hidden,
      text: document.getElementById('gpu-memory').textContent, memory: window.rullamaApp.gpuMemory }));
    await shot(page, 'loaded-memory');
    await page.click('#toggle-loader');
    await shot(page, 'loaded');

    out.attach = {};
    for (const [name, mimeType] of [['photo.png', 'image/png'], ['voice.wav', 'audio/wav'], ['notes.txt', 'text/plain']]) {
      await page.setInputFiles('#attach-file', { name, mimeType, buffer: Buffer.from('not really ' + name) });
      out.attach[name] = await page.textContent('#notice');
    }
    await shot(page, 'attach-refused');
    // The sentences for a Gemma 4 model loaded with "Text only" (this model has no towers: the page is told its
    // file had them, as a text-only load's result says), then back as it was.
    await app(page, () => { window.rullamaApp.model.towers_left_out = ['image', 'audio']; });
    out.attach_text_only = {};
    for (const [name, mimeType] of [['photo.png', 'image/png'], ['voice.wav', 'audio/wav']]) {
      await page.setInputFiles('#attach-file', { name, mimeType, buffer: Buffer.from('not really ' + name) });
      out.attach_text_only[name] = await page.textContent('#notice');
    }
    await page.click('#record');
    out.attach_text_only.record = await page.textContent('#notice');
    await app(page, () => { window.rullamaApp.model.towers_left_out = []; });

    out.r1 = await chat(page, cfg.prompts[0], { temperature: 0, max_tokens: cfg.max_tokens });
    await shot(page, 'greedy-reply');

    await send(page, cfg.prompts[1], { temperature: 0, max_tokens: 200 });
    await until(page, () => window.rullamaApp.streaming && window.rullamaApp.streaming.n >= 3);
    await shot(page, 'streaming');
    await page.click('#stop');
    out.r2 = await reply(page);
    await shot(page, 'stopped');
    await snapshotSaved(page, out.r2.stats.context);
    out.shown_before_reload = await shownMessages(page);

    await page.reload();
    await until(page, () => window.rullamaApp && window.rullamaApp.started && window.rullamaApp.python);
    out.shown_after_reload = await shownMessages(page);
    await shot(page, 'reloaded');
    out.load2 = await loadFromServer(page, 'default');
    out.r3 = await chat(page, cfg.prompts[2], { temperature: 0, max_tokens: cfg.max_tokens });
    await shot(page, 'resumed');

    // Images and a clip for this text-only model, in a new conversation on the same page: the model is loaded
    // already (a load costs a minute of kernel compiling on this software GPU).
    await page.click('#new-chat');
    out.images_text = await imagesWithATextModel(page, cfg.prompts[0]);
    await ctx.close();
    return out;
  },

  // Plain-sentence errors: 404, nothing listening, a corrupt file, a device too small for the model.
  async errors() {
    const { ctx, page } = await launch();
    const out = {};
    await open(page, cfg.url);
    await page.click('[role=tab][data-tab=url]');
    for (const [name, url] of [['not_found', 'models/missing.gguf'], ['unreachable', cfg.dead_url]]) {
      await page.fill('#model-url', url);
      await forgetError(page);
      await page.click('#load');
      out[name] = await shownError(page);
      await shot(page, name);
    }
    await page.click('[role=tab][data-tab=file]');
    await forgetError(page);
    await page.setInputFiles('#model-file', { name: 'corrupt.gguf', mimeType: 'application/octet-stream', buffer: Buffer.from(cfg.corrupt_b64, 'base64') });
    out.corrupt = await shownError(page);
    await shot(page, 'corrupt');

    await open(page, cfg.url + '?max_buffer=4096');
    const r = await loadFromServer(page, 'default');
    out.device_limit = await shownError(page);
    out.device_limit.load_error = r.error;
    await shot(page, 'device-limit');
    await ctx.close();
    return out;
  },

  // No WebGPU: a browser without an adapter, and one without navigator.gpu at all.
  async nowebgpu() {
    const out = {};
    let { ctx, page } = await launch({ webgpu: false });
    await page.goto(cfg.url);
    out.no_adapter = await shownError(page);
    out.no_adapter.load_disabled = await page.isDisabled('#load');
    await until(page, () => !/loading list/.test(document.getElementById('server-models').textContent), null, 30000);
    out.no_adapter.server_models = await page.textContent('#server-models');
    await shot(page, 'no-adapter');
    await ctx.close();
    ({ ctx, page } = await launch());
    await page.addInitScript(() => { delete Object.getPrototypeOf(navigator).gpu; });
    await page.goto(cfg.url);
    out.no_gpu_api = await shownError(page);
    await shot(page, 'no-navigator-gpu');
    await ctx.close();
    return out;
  },

  // The other sources: OPFS cache (download paused, page reloaded, resumed), an Ollama model, a local file.
  async sources() {
    const { ctx, page } = await launch();
    const out = {};
    const url = cfg.url + '?chunk=' + cfg.chunk;
    await open(page, url);
    await page.click('[role=tab][data-tab=server]');
    await page.selectOption('#server-models', 'default');
    await page.check('#keep-copy');
    await page.click('#load');
    await until(page, n => window.rullamaApp.lastDownload && window.rullamaApp.lastDownload.done >= n, cfg.chunk * 4);
    await page.click('#pause-download');
    await until(page, () => !window.rullamaApp.busy);
    out.paused = await app(page, () => ({ download: window.rullamaApp.lastDownload, text: document.getElementById('progress-text').textContent }));
    await page.click('[role=tab][data-tab=cache]');
    await until(page, () => document.querySelector('#cache-list button'));
    out.cache_list_paused = await page.textContent('#cache-list');
    await shot(page, 'download-paused');

    await page.reload();
    await until(page, () => window.rullamaApp && window.rullamaApp.started && window.rullamaApp.python);
    await page.click('[role=tab][data-tab=cache]');
    await until(page, () => document.querySelector('#cache-list button'));
    await app(page, () => { window.rullamaApp.lastDownload = null; });
    await page.click('#cache-list button'); // "Resume download"
    await until(page, () => window.rullamaApp.lastDownload);
    out.resumed = await app(page, () => window.rullamaApp.lastDownload);
    out.load_opfs = await waitLoaded(page);
    out.opfs_download_last = await app(page, () => window.rullamaApp.lastDownload);
    await shot(page, 'opfs-loaded');
    out.r_opfs = await chat(page, cfg.prompts[0], { temperature: 0, max_tokens: cfg.max_tokens });
    await showLoader(page);
    await page.click('[role=tab][data-tab=cache]');
    out.cache_list_done = await page.textContent('#cache-list');

    await page.click('[role=tab][data-tab=server]');
    await page.uncheck('#keep-copy');
    out.server_models = await app(page, () => window.rullamaApp.serverModels);
    await page.selectOption('#kv-cache-type', 'q8_0');  // this load with the KV cache in 8-bit blocks
    out.load_ollama = await loadFromServer(page, cfg.ollama_id);
    out.pill_ollama = await page.textContent('#model-pill');
    await page.click('#new-chat');
    out.r_ollama = await chat(page, cfg.prompts[0], { temperature: 0, max_tokens: cfg.max_tokens });
    await shot(page, 'ollama');

    await showLoader(page);
    await page.click('[role=tab][data-tab=file]');
    await forgetError(page);
    await page.selectOption('#kv-cache-type', 'f16');
    await page.check('#ple-on-gpu');  // this load (a Gemma 4 E2B layout) with its per-layer table on the GPU
    await page.setInputFiles('#model-file', cfg.local_file);
    await until(page, () => window.rullamaApp.busy || window.rullamaApp.lastError, null, 60000);
    out.load_file = await waitLoaded(page);
    out.pill_file = await page.textContent('#model-pill');
    await page.click('#new-chat');
    out.r_file = await chat(page, cfg.prompts[0], { temperature: 0, max_tokens: cfg.max_tokens });
    await shot(page, 'local-file');

    // Regenerate replaces the last reply (greedy: with the same tokens); a system prompt goes into the context.
    await app(page, () => { window.rullamaApp.lastReply = null; });
    await page.click('#regenerate');
    out.r_regenerated = await reply(page);
    out.shown_after_regenerate = await shownMessages(page);
    await shot(page, 'regenerated');
    await page.click('#new-chat');
    await page.click('#system-box summary');
    await page.fill('#system', cfg.system_prompt);
    out.r_system = await chat(page, cfg.prompts[0], { temperature: 0, max_tokens: cfg.max_tokens });
    await shot(page, 'system-prompt');
    await ctx.close();
    return out;
  },

  // Images with a vision model: a dropped PNG answered greedily (compared with native by the test), stop while
  // the tower reads two images (pasted and picked), a damaged image and an SVG refused by Python with the text
  // kept, then a reload: the thumbnails come back from IndexedDB and the next turn resumes from the snapshot.
  async images_vision() {
    const { ctx, page } = await launch();
    const out = {};
    await open(page, cfg.url);
    if (cfg.mmproj_url) out.load = await loadWithMmproj(page, cfg.model_url, cfg.mmproj_url);
    else out.load = await loadFromServer(page, 'default');
    await shot(page, 'loaded');
    const [png, jpg, tall] = cfg.images;
    await page.selectOption('#image_tokens', String(cfg.image_tokens));
    await dropFiles(page, '#prompt', [png]);
    out.attached = await thumbsAre(page, 1);
    await setSampling(page, { temperature: 0, max_tokens: cfg.max_tokens });
    await page.fill('#prompt', cfg.prompts[0]);
    await shot(page, 'png-dropped');
    await app(page, () => { window.rullamaApp.lastReply = null; window.rullamaApp.media = null; });
    await page.click('#send');
    try {
      await until(page, () => window.rullamaApp.media && window.rullamaApp.media.stage === 'image', null, 120000);
      await shot(page, 'reading-image');
    } catch { /* read before we looked */ }
    out.r1 = await reply(page);
    out.r1.media = await app(page, () => window.rullamaApp.media);
    await snapshotSaved(page, out.r1.stats.context);
    await shot(page, 'png-reply');

    // Two images in one message (pasted, picked); stop as soon as the tower reports.
    await pasteFiles(page, '#prompt', [jpg]);
    await thumbsAre(page, 1);
    await pickFiles(page, [tall]);
    out.two = await thumbsAre(page, 2);
    await page.fill('#prompt', cfg.prompts[1]);
    await app(page, () => { window.rullamaApp.lastReply = null; window.rullamaApp.media = null; });
    await page.click('#send');
    await until(page, () => (window.rullamaApp.media && window.rullamaApp.media.stage === 'image') || window.rullamaApp.lastReply, null, 300000);
    await shot(page, 'reading-two');
    await page.click('#stop').catch(() => {});
    out.r2 = await reply(page);
    out.r2.cancelled = !!out.r2.cancelled;
    out.after_stop = await shownWithImages(page);
    out.after_stop_status = await page.textContent('#status');
    await shot(page, 'stopped');

    // Python refuses a damaged image and an SVG in a sentence; the text and the image go back to the composer.
    out.bad = {};
    for (const f of cfg.bad_images) {
      await forgetError(page);
      await pickFiles(page, [f]);
      await thumbsAre(page, 1);
      await page.fill('#prompt', cfg.prompts[2]);
      await app(page, () => { window.rullamaApp.lastReply = null; });
      await page.click('#send');
      await until(page, () => window.rullamaApp.lastReply && !window.rullamaApp.busy);
      const e = await shownChatError(page);
      out.bad[f.name] = { ...e, prompt: await page.inputValue('#prompt'), thumbs: await composerThumbs(page),
        shown: (await shownWithImages(page)).length };
      await shot(page, 'refused-' + f.name.replace(/\W/g, '_'));
      await app(page, () => { for (const b of document.querySelectorAll('#attachments .remove')) b.click(); });
      await thumbsAre(page, 0);
    }
    out.stored_before_reload = await storedConversation(page);

    await page.reload();
    await until(page, () => window.rullamaApp && window.rullamaApp.started && window.rullamaApp.python);
    out.shown_after_reload = await shownWithImages(page);
    out.stored_after_reload = await storedConversation(page);
    await shot(page, 'reloaded');
    if (cfg.mmproj_url) out.load2 = await loadWithMmproj(page, cfg.model_url, cfg.mmproj_url);
    else out.load2 = await loadFromServer(page, 'default');
    await page.fill('#prompt', '');
    out.r3 = await chat(page, cfg.prompts[2], { temperature: 0, max_tokens: cfg.max_tokens });
    out.shown_final = await shownWithImages(page);
    await shot(page, 'resumed');
    await ctx.close();
    return out;
  },

  // A llama.cpp model + vision projector pair listed by the server (`rullama serve --model M --mmproj P`): loaded
  // together from the server's list, a dropped PNG answered; then both kept in the browser (OPFS) and loaded
  // from there, with the same reply.
  async mmproj_pair() {
    const { ctx, page } = await launch();
    const out = {};
    await open(page, cfg.url);
    out.option = await page.textContent('#server-models');
    out.load = await loadFromServer(page, 'default');
    await shot(page, 'pair-loaded');
    await page.selectOption('#image_tokens', String(cfg.image_tokens));
    const ask = async () => {
      await dropFiles(page, '#prompt', [cfg.images[0]]);
      await thumbsAre(page, 1);
      return chat(page, cfg.prompts[0], { temperature: 0, max_tokens: cfg.max_tokens });
    };
    out.r = await ask();
    await shot(page, 'pair-reply');

    await showLoader(page);
    await page.check('#keep-copy');
    out.load_opfs = await loadFromServer(page, 'default');
    await showLoader(page);
    await page.click('[role=tab][data-tab=cache]');
    await until(page, () => document.querySelectorAll('#cache-list li button').length >= 4);
    out.cache_list = await app(page, () => [...document.querySelectorAll('#cache-list li')].map(li => li.textContent));
    await shot(page, 'pair-cached');
    await page.click('#new-chat');
    out.r_opfs = await ask();
    await shot(page, 'pair-opfs-reply');
    await ctx.close();
    return out;
  },

  // Audio with the tiny audio model, Chromium's fake microphone playing cfg.capture: the microphone refused
  // (a sentence, nothing typed lost), a dropped WAV answered greedily (compared with native by the test), a
  // WAV with a cut header refused by Python with the text and clip kept, a WebM made by MediaRecorder decoded
  // by the page, a recording (level meter, stop after ~2 s) sent with it, then a reload: the clips come back
  // from IndexedDB with their play buttons and the next turn resumes from the snapshot; last, Stop while the
  // tower listens to a clip of two 30 s blocks.
  async audio() {
    const { ctx, page } = await launch({ extraArgs: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${cfg.capture}`] });
    const out = {};
    await open(page, cfg.url);
    // The page's decoder (what MP3, OGG, M4A and WebM go through) on WAV files, for the test to compare with
    // Python's decoding: a 48 kHz clip (the browser resamples) and a stereo one (the page averages channels).
    out.decoded = [];
    for (const f of cfg.decode) {
      const b64 = await app(page, async ([src, data]) => {
        const { decodeTo16kMono } = await import(src);
        const x = await decodeTo16kMono(Uint8Array.from(atob(data), c => c.charCodeAt(0)).buffer);
        const u = new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
        let s = '';
        for (let i = 0; i < u.length; i += 32768) s += String.fromCharCode(...u.subarray(i, i + 32768));
        return btoa(s);
      }, [new URL('js/audio.js', cfg.url).href, fs.readFileSync(f).toString('base64')]);
      const file = path.join(cfg.artifacts, `${cfg.scenario}-decoded-${out.decoded.length + 1}.f32`);
      fs.writeFileSync(file, Buffer.from(b64, 'base64'));
      out.decoded.push({ wav: f, path: file });
    }
    out.load = await loadFromServer(page, 'default');
    await shot(page, 'loaded');
    await setSampling(page, { temperature: 0, max_tokens: cfg.max_tokens });

    // The microphone refused: a sentence; the typed text stays, nothing is attached.
    await page.fill('#prompt', cfg.prompts[0]);
    await app(page, () => {
      window.__gum = navigator.mediaDevices.getUserMedia;
      navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
    });
    await page.click('#record');
    await until(page, () => /microphone/.test(document.getElementById('notice').textContent), null, 10000);
    out.refused = { notice: await page.textContent('#notice'), prompt: await page.inputValue('#prompt'),
      recorder_hidden: await page.isHidden('#recorder'), pending: await app(page, () => window.rullamaApp.pending.length) };
    await shot(page, 'mic-refused');
    await app(page, () => { navigator.mediaDevices.getUserMedia = window.__gum; });

    // A dropped WAV: its bytes go to Python; the reply is compared with native.
    await dropFiles(page, '#prompt', [cfg.wav]);
    out.attached = await clipsAre(page, 1);
    await shot(page, 'wav-dropped');
    await app(page, () => { window.rullamaApp.lastReply = null; window.rullamaApp.media = null; });
    await page.click('#send');
    try {
      await until(page, () => window.rullamaApp.media && window.rullamaApp.media.stage === 'audio', null, 300000);
      await shot(page, 'listening');
    } catch { /* heard before we looked */ }
    out.r1 = await reply(page);
    out.r1.media = await mediaLog(page);
    await snapshotSaved(page, out.r1.stats.context);
    await shot(page, 'wav-reply');

    // A WAV whose header is cut short: Python's sentence; the text and the clip go back to the composer.
    await forgetError(page);
    await pickFiles(page, [cfg.bad_wav]);
    await clipsAre(page, 1);
    await page.fill('#prompt', cfg.prompts[1]);
    await app(page, () => { window.rullamaApp.lastReply = null; });
    await page.click('#send');
    await until(page, () => window.rullamaApp.lastReply && !window.rullamaApp.busy);
    out.bad = { ...(await shownChatError(page)), prompt: await page.inputValue('#prompt'), clips: await clipsAre(page, 1),
      shown: (await shownMessages(page)).length };
    await shot(page, 'bad-wav');
    await page.click('#attachments .clip .remove');
    await clipsAre(page, 0);

    // A WebM/Opus memo made by MediaRecorder from the microphone, dropped: decoded by the page to 16 kHz.
    await app(page, async () => {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const mr = new MediaRecorder(stream, { mimeType: 'audio/webm;codecs=opus' });
      const chunks = [];
      mr.ondataavailable = e => chunks.push(e.data);
      const stopped = new Promise(r => { mr.onstop = r; });
      mr.start();
      await new Promise(r => setTimeout(r, 1500));
      mr.stop();
      await stopped;
      for (const t of stream.getTracks()) t.stop();
      const dt = new DataTransfer();
      dt.items.add(new File(chunks, 'memo.webm', { type: 'audio/webm' }));
      document.getElementById('prompt').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    });
    out.webm = await clipsAre(page, 1);

    // Record from the microphone: the meter moves; stop after about 2 s.
    await page.click('#record');
    await until(page, () => window.rullamaApp.recording && window.rullamaApp.recording.seconds >= 1, null, 30000);
    await shot(page, 'recording');
    await until(page, () => window.rullamaApp.recording && window.rullamaApp.recording.seconds >= 2, null, 30000);
    out.recording = await app(page, () => ({ ...window.rullamaApp.recording, time: document.getElementById('rec-time').textContent,
      bar: document.getElementById('rec-level-bar').style.width, visible: !document.getElementById('recorder').hidden }));
    await page.click('#rec-stop');
    out.recorded = await clipsAre(page, 2);
    out.recorder_hidden_after = await page.isHidden('#recorder');
    await page.fill('#prompt', cfg.prompts[2]);
    await shot(page, 'recorded');
    await app(page, () => { window.rullamaApp.lastReply = null; window.rullamaApp.media = null; });
    await page.click('#send');
    try {
      await until(page, () => window.rullamaApp.media && window.rullamaApp.media.stage === 'audio', null, 300000);
      await shot(page, 'listening-two');
    } catch { /* heard before we looked */ }
    out.r2 = await reply(page);
    out.r2.media = await mediaLog(page);
    await snapshotSaved(page, out.r2.stats.context);
    await shot(page, 'recording-reply');
    // The samples the page sent (float32 16 kHz), for the test's native run of the same conversation: into
    // files beside the screenshots (the RESULT line stays short).
    const pcm = await app(page, async () => {
      const m = window.rullamaApp.active.messages.filter(x => x.audio).pop();
      const b64 = async blob => { const u = new Uint8Array(await blob.arrayBuffer()); let s = ''; for (let i = 0; i < u.length; i += 32768) s += String.fromCharCode(...u.subarray(i, i + 32768)); return btoa(s); };
      return Promise.all(m.audio.map(async a => ({ name: a.name, b64: a.pcm ? await b64(a.pcm) : null })));
    });
    out.pcm = pcm.map((p, i) => {
      const file = path.join(cfg.artifacts, `${cfg.scenario}-sent-${i + 1}.f32`);
      fs.writeFileSync(file, Buffer.from(p.b64, 'base64'));
      return { name: p.name, path: file };
    });
    out.stored_before_reload = await storedConversation(page);

    // Reload: the clips come back with their play buttons; one plays; the next turn resumes from the snapshot.
    await page.reload();
    await until(page, () => window.rullamaApp && window.rullamaApp.started && window.rullamaApp.python);
    out.shown_after_reload = await shownWithClips(page);
    out.stored_after_reload = await storedConversation(page);
    await page.click('#messages .msg:nth-child(1) .clip button.play');
    await page.waitForTimeout(400);
    out.played = await app(page, () => { const a = document.querySelector('#messages .msg:nth-child(1) .clip audio'); return { paused: a.paused, time: a.currentTime, label: document.querySelector('#messages .msg:nth-child(1) .clip button.play').getAttribute('aria-label') }; });
    await shot(page, 'reloaded');
    out.load2 = await loadFromServer(page, 'default');
    await page.fill('#prompt', '');
    out.r3 = await chat(page, cfg.prompts[3], { temperature: 0, max_tokens: cfg.max_tokens });
    out.r3.media = await mediaLog(page);
    out.shown_final = await shownWithClips(page);
    await shot(page, 'resumed');

    // A clip over 30 s (two blocks for the tower; a WAV at another rate, resampled by Python): stop while the
    // tower listens to its first block. No reply; the message and its clip stay.
    await dropFiles(page, '#prompt', [cfg.long_wav]);
    out.long = await clipsAre(page, 1);
    await page.fill('#prompt', cfg.prompts[4]);
    await app(page, () => { window.rullamaApp.lastReply = null; window.rullamaApp.media = null; });
    await page.click('#send');
    await until(page, () => (window.rullamaApp.media && window.rullamaApp.media.stage === 'audio') || window.rullamaApp.lastReply, null, 300000);
    out.long_activity = await app(page, () => { const a = document.querySelector('.msg.streaming .activity'); return a ? a.textContent : null; });
    await shot(page, 'listening-long');
    await page.click('#stop').catch(() => {});
    out.r4 = await reply(page);
    out.r4.cancelled = !!out.r4.cancelled;
    out.r4.media = await mediaLog(page);
    out.after_stop = await shownWithClips(page);
    out.after_stop_status = await page.textContent('#status');
    await shot(page, 'stopped-listening');
    await ctx.close();
    return out;
  },

  // Speech with the tiny Kokoro (tools/make_tiny_kokoro.py: Kokoro's kernels at small widths, seconds a
  // sentence here) beside the tiny chat model: the voice picker from the Kokoro file's header; a greedy reply
  // read aloud (Kokoro loads on that first use, with its progress); "Speak replies" reading the next reply as
  // soon as it is written; a typed text of several sentences (the first plays before the last is synthesised)
  // and its WAV download; a 20,000-character paste stopped after its first sentence while the page keeps
  // drawing frames; the error sentences. The PCM of every sentence is written beside the screenshots for the
  // test to compare with native.
  async speech() {
    const { ctx, page } = await launch();
    const out = {};
    await open(page, cfg.url);
    await until(page, () => document.querySelectorAll('#voice option').length > 1, null, 120000);
    out.picker = await app(page, () => [...document.querySelectorAll('#voice optgroup')].map(g => ({ label: g.label,
      voices: [...g.children].map(o => ({ value: o.value, text: o.textContent })) })));
    out.picker_before_load = await app(page, () => ({ loaded: !!window.rullamaApp.speech.loaded, selected: document.getElementById('voice').value }));
    out.load = await loadFromServer(page, 'default');
    await page.selectOption('#voice', cfg.voice);
    await shot(page, 'voices');

    const speechDone = () => until(page, () => { const c = window.rullamaApp.speech.current; return c && (c.done || c.error || c.stopped); });
    const firstSentence = async (before = 0) => {
      await until(page, r => { const c = window.rullamaApp.speech.current; return c && c.run > r && (c.received >= 1 || c.error || c.done); }, before);
      const e = await app(page, () => { const c = window.rullamaApp.speech.current; return c.error ? `${c.error.kind}: ${c.error.message} ${c.error.detail || ''}` : null; });
      if (e) throw new Error('speech failed: ' + e);
    };
    const currentRun = () => app(page, () => (window.rullamaApp.speech.current ? window.rullamaApp.speech.current.run : 0));
    const speechRun = async (name) => {
      const r = await app(page, () => {
        const SP = window.rullamaApp.speech, c = SP.current;
        const b64 = a => { const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength); let s = ''; for (let i = 0; i < u.length; i += 32768) s += String.fromCharCode(...u.subarray(i, i + 32768)); return btoa(s); };
        return { run: c.run, text: c.text, texts: c.texts, durations: c.durations, received: c.received, sentences: c.sentences, samples: c.samples,
          done: c.done, stopped: c.stopped, result: c.result || null, error: c.error ? { kind: c.error.kind, message: c.error.message } : null,
          log: SP.log.filter(e => e.run === c.run), loaded: SP.loaded, pcm: c.pcm.map(p => (p ? b64(p) : null)),
          now: document.getElementById('speech-now').textContent };
      });
      r.pcm = r.pcm.map((b, i) => {
        if (!b) return null;
        const file = path.join(cfg.artifacts, `${cfg.scenario}-${name}-${i + 1}.f32`);
        fs.writeFileSync(file, Buffer.from(b, 'base64'));
        return file;
      });
      log(name, JSON.stringify({ sentences: r.sentences, received: r.received, stopped: r.stopped, error: r.error, texts: r.texts }));
      return r;
    };
    const heard = () => until(page, () => window.rullamaApp.speech.current.finished, null, 120000); // played to the end

    // Read aloud a greedy reply: Kokoro loads now, with its own progress.
    out.r1 = await chat(page, cfg.prompts[0], { temperature: 0, max_tokens: cfg.read_tokens });
    const lastReply = '#messages .msg.assistant:last-child';
    out.button = await page.textContent(`${lastReply} .read-aloud`);
    // Every label the button takes from the click on: a short sentence can play to its end, and the button
    // turn back, before a read after the first sentence would see "Stop reading".
    await page.evaluate((sel) => {
      const b = document.querySelector(sel);
      window.readAloudLabels = [];
      new MutationObserver(() => window.readAloudLabels.push(b.textContent)).observe(b, { childList: true, subtree: true, characterData: true });
    }, `${lastReply} .read-aloud`);
    await page.click(`${lastReply} .read-aloud`);
    try {
      await until(page, () => /Loading the speech model: \d/.test(document.getElementById('speech-progress-text').textContent), null, 60000);
      await shot(page, 'speech-loading');
    } catch { /* loaded before we looked */ }
    await firstSentence();
    out.reading_button = await page.textContent(`${lastReply} .read-aloud`);
    out.reading_labels = await page.evaluate(() => window.readAloudLabels);
    await shot(page, 'first-sentence');
    await speechDone();
    out.read = await speechRun('read');
    await heard();
    out.read.button_after = await page.textContent(`${lastReply} .read-aloud`);
    out.speech_log = await app(page, () => window.rullamaApp.speech.log);
    out.speech_progress = await app(page, () => window.rullamaApp.speech.progress);
    await page.waitForTimeout(300);
    await shot(page, 'read-aloud');

    // Speak replies: the next reply is read as soon as it is written.
    let before = await currentRun();
    await page.check('#speak-replies');
    await page.click('#new-chat');
    out.r2 = await chat(page, cfg.prompts[1], { temperature: 0, max_tokens: cfg.replies_tokens });
    await firstSentence(before);
    await shot(page, 'speak-replies');
    await speechDone();
    out.replied = await speechRun('replied');
    await heard();
    out.settings = await app(page, () => JSON.parse(localStorage.getItem('rullama.settings')));
    await page.uncheck('#speak-replies');

    // A typed text of several sentences: each is played as it arrives, the first before the last is made;
    // then the whole text's audio as a WAV file.
    await page.click('#speech-more summary');
    before = await currentRun();
    await page.fill('#speech-text', cfg.sentences_text);
    await page.click('#speech-say');
    await firstSentence(before);
    await speechDone();
    await heard();  // before the log is read: the last sentence's 'play' comes when the clock reaches it
    out.sentences = await speechRun('sentences');
    await shot(page, 'sentences');
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#speech-download')]);
    out.download = { name: dl.suggestedFilename(), path: path.join(cfg.artifacts, `${cfg.scenario}-download.wav`) };
    await dl.saveAs(out.download.path);

    // A 20,000-character paste: the first sentence arrives and plays; the page keeps drawing frames; Stop.
    await page.fill('#speech-text', cfg.long_text);
    await app(page, () => {
      const m = window.__frames = { gaps: [], last: performance.now(), on: true };
      const tick = () => { const t = performance.now(); m.gaps.push(t - m.last); m.last = t; if (m.on) requestAnimationFrame(tick); };
      requestAnimationFrame(tick);
    });
    before = await currentRun();
    await page.click('#speech-say');
    await firstSentence(before);
    await shot(page, 'long-paste-reading');
    out.long = { typed: (await page.inputValue('#speech-text')).length };
    await page.click('#speech-stop');
    const stoppedRun = await currentRun();
    await until(page, r => window.rullamaApp.speech.log.some(e => e.what === 'done' && e.run === r), stoppedRun);
    await page.waitForTimeout(500);
    Object.assign(out.long, await speechRun('long'));
    out.long.frames = await app(page, () => { const m = window.__frames; m.on = false; const g = m.gaps.slice(1); return { n: g.length, max: Math.max(...g), p99: g.sort((a, b) => a - b)[Math.floor(g.length * 0.99)] }; });
    await shot(page, 'long-paste-stopped');

    // Errors: each a sentence under the chat.
    const speechError = async () => {
      await until(page, () => !document.getElementById('speech-error').hidden && !window.rullamaApp.speech.loading, null, LONG);
      return app(page, () => ({ kind: document.getElementById('speech-error').dataset.kind, message: document.getElementById('speech-error-message').textContent }));
    };
    out.errors = {};
    for (const [name, text] of [['empty', ''], ['punctuation', '?!... ---']]) {
      await page.fill('#speech-text', text);
      await page.click('#speech-say');
      out.errors[name] = await speechError();
      await shot(page, 'error-' + name);
    }
    await app(page, () => { const o = document.createElement('option'); o.value = o.textContent = 'xx_nobody'; document.getElementById('voice').append(o); });
    await page.selectOption('#voice', 'xx_nobody');
    await page.fill('#speech-text', 'Hello there.');
    await page.click('#speech-say');
    out.errors.unknown_voice = await speechError();
    await shot(page, 'error-unknown-voice');
    await page.selectOption('#voice', cfg.voice);
    await page.setInputFiles('#voice-file', { name: 'af_wrong.bin', mimeType: 'application/octet-stream', buffer: Buffer.alloc(1000) });
    out.errors.voicepack = await speechError();
    await shot(page, 'error-voicepack');
    await page.setInputFiles('#kokoro-file', { name: 'damaged-kokoro.gguf', mimeType: 'application/octet-stream', buffer: Buffer.from(cfg.damaged_b64, 'base64') });
    out.errors.damaged = await speechError();
    out.errors.still_loaded = await app(page, () => window.rullamaApp.speech.loaded && window.rullamaApp.speech.loaded.name);
    await shot(page, 'error-damaged-kokoro');

    await ctx.close();
    return out;
  },

  // The real model: load it and reproduce the first tokens of a greedy reply.
  async real() {
    const { ctx, page } = await launch();
    const out = {};
    await open(page, cfg.url);
    await page.fill('#max-context', String(cfg.max_context));
    out.load = await loadFromServer(page, 'default', { progressShot: 'loading' });
    await shot(page, 'loaded');
    out.r = await chat(page, cfg.prompts[0], { temperature: 0, max_tokens: cfg.max_tokens });
    await shot(page, 'reply');
    await ctx.close();
    return out;
  },

  // The voice-clone panel with the tiny Kokoro (no chat model): a too-short recording refused; the target WAV
  // dropped (its waveform); cfg.steps steps from af_heart with a one-word training text, paused and resumed,
  // while the page keeps drawing frames (the loss curve's canvas read back); the current voice played; saved
  // under a name (the picker's My voices) and reading typed text aloud; exported, imported back, a wrong-size
  // import refused; a reload keeps the saved voices.
  async voiceclone() {
    const { ctx, page } = await launch();
    const out = {};
    const C = () => app(page, () => { const c = window.rullamaApp.clone; return { status: c.status, steps: c.steps, curve: c.curve, losses: c.losses,
      target: c.target && { ...c.target, envelope: c.target.envelope.length }, saved: c.saved, lastError: c.lastError,
      started: c.started, stepsPerSecond: c.stepsPerSecond, stepSize: c.stepSize, log: c.log.map(e => ({ what: e.what, t: e.t, step: e.step })) }; });
    const cloneError = async () => {
      await until(page, () => !document.getElementById('clone-error').hidden, null, 120000);
      const e = await app(page, () => ({ kind: document.getElementById('clone-error').dataset.kind, message: document.getElementById('clone-error-message').textContent }));
      log('clone error', JSON.stringify(e));
      return e;
    };
    const wav = (name, file) => ({ name, mimeType: 'audio/wav', path: file });
    // The panel is in the settings column, below the speech panel: each screenshot shows the part it is about.
    const see = async (sel, step) => { await page.$eval(sel, e => e.scrollIntoView({ block: 'center' })); await shot(page, step); };
    await open(page, cfg.url);
    await until(page, () => document.querySelectorAll('#voice option').length > 1, null, 120000);
    await page.click('#clone-panel > summary');
    out.errors = {};
    await dropFiles(page, '#clone-drop', [wav('short.wav', cfg.short_path)]);
    out.errors.short = await cloneError();
    await see('#clone-error', 'error-short');

    // The target: dropped on the panel (not attached to the chat). Waits for it or for a new error: the short
    // recording's sentence is still shown until the target is taken.
    const errorsLogged = () => window.rullamaApp.clone.log.filter(e => e.what === 'error').length;
    const errorsBefore = await app(page, errorsLogged);
    await dropFiles(page, '#clone-drop', [wav(cfg.target_name, cfg.target_path)]);
    await until(page, ([n, k]) => (window.rullamaApp.clone.target && window.rullamaApp.clone.target.name === n)
      || window.rullamaApp.clone.log.filter(e => e.what === 'error').length > k, [cfg.target_name, errorsBefore], 120000);
    out.target = (await C()).target;
    if (!out.target) throw new Error('the target was refused: ' + JSON.stringify((await C()).lastError));
    out.error_after_target = await app(page, () => document.getElementById('clone-error').hidden);
    out.attachments = await app(page, () => window.rullamaApp.pending.length);
    out.wave = await app(page, () => { const c = document.getElementById('clone-wave'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let blue = 0, grey = 0; for (let i = 0; i < d.length; i += 4) { if (d[i + 3] > 0 && d[i + 2] > 200 && d[i] < 80) blue++; else if (d[i + 3] > 0 && d[i] > 180 && d[i] < 210) grey++; } return { blue, grey }; });
    await see('#clone-target', 'target');

    // Options, then Train: Kokoro loads, the start voice is measured, cfg.steps steps.
    await page.click('#clone-options > summary');
    await page.fill('#clone-text', cfg.text);
    await page.selectOption('#clone-start-voice', cfg.start);
    await page.fill('#clone-steps', String(cfg.steps));
    await page.fill('#clone-seed', String(cfg.seed));
    await page.fill('#clone-sample', cfg.sample);
    await see('#clone-options', 'options');
    await app(page, () => {
      const m = window.__frames = { gaps: [], last: performance.now(), on: true };
      const tick = () => { const t = performance.now(); m.gaps.push(t - m.last); m.last = t; if (m.on) requestAnimationFrame(tick); };
      requestAnimationFrame(tick);
    });
    const t0 = Date.now();
    out.train_clicked = await app(page, () => performance.now());
    await page.click('#clone-train-button');
    await until(page, () => window.rullamaApp.clone.steps >= 3 || window.rullamaApp.clone.lastError);
    out.button_while_training = await page.textContent('#clone-train-button');
    await see('#clone-curve', 'training');
    // Pause, then Resume: the climb goes on from where it was.
    await page.click('#clone-train-button');
    await until(page, () => window.rullamaApp.clone.status === 'paused' || window.rullamaApp.clone.lastError);
    out.paused = { ...(await C()), button: await page.textContent('#clone-train-button'), text: await page.textContent('#clone-status') };
    delete out.paused.target;
    await page.waitForTimeout(1000);
    out.paused.steps_a_second_later = (await C()).steps;
    await see('#clone-curve', 'paused');
    await page.click('#clone-train-button');
    await until(page, () => ['done', 'paused'].includes(window.rullamaApp.clone.status) || window.rullamaApp.clone.lastError);
    out.train_seconds = (Date.now() - t0) / 1000;
    out.frames = await app(page, () => { const m = window.__frames; m.on = false; const g = m.gaps.slice(1); return { n: g.length, max: Math.max(...g), p99: g.sort((a, b) => a - b)[Math.floor(g.length * 0.99)] }; });
    out.trained = await C();
    out.status_text = await page.textContent('#clone-status');
    out.button_after = await page.textContent('#clone-train-button');
    log('trained', JSON.stringify({ steps: out.trained.steps, curve: out.trained.curve, seconds: out.train_seconds, error: out.trained.lastError }));
    // The curve as drawn: the canvas's blue pixels per column, top to bottom.
    out.curve_pixels = await app(page, () => { const c = document.getElementById('clone-curve'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const cols = []; for (let x = 0; x < c.width; x++) { const ys = []; for (let y = 0; y < c.height; y++) { const i = 4 * (y * c.width + x); if (d[i + 2] > 200 && d[i] < 80 && d[i + 1] < 150) ys.push(y); } cols.push(ys); } return { width: c.width, height: c.height, cols }; });
    await see('#clone-curve', 'trained');

    // Play the current voice.
    await page.click('#clone-play-voice');
    await until(page, () => window.rullamaApp.clone.log.some(e => e.what === 'preview') || window.rullamaApp.clone.lastError);
    out.preview = await app(page, () => { const p = window.rullamaApp.clone.preview; return p && { step: p.step, samples: p.samples, peak: Math.max(...p.pcm.map(Math.abs)) }; });

    // Save: the picker lists it under My voices, selected; typed text is read aloud with it.
    await page.fill('#clone-name', cfg.name);
    await page.click('#clone-save');
    await until(page, n => window.rullamaApp.clone.saved.some(v => v.name === n) || window.rullamaApp.clone.lastError, cfg.name);
    const picker = () => app(page, () => ({ selected: document.getElementById('voice').value, groups: [...document.querySelectorAll('#voice optgroup')].map(g => ({ label: g.label, voices: [...g.children].map(o => o.value) })),
      saved: [...document.querySelectorAll('#clone-saved .name')].map(e => e.textContent) }));
    out.picker_saved = await picker();
    await see('#clone-saved-box', 'saved');
    await page.click('#speech-more summary');
    await page.fill('#speech-text', cfg.say);
    await page.click('#speech-say');
    await until(page, () => { const c = window.rullamaApp.speech.current; return c && (c.done || c.error); });
    out.spoken = await app(page, () => { const c = window.rullamaApp.speech.current; return { voice: document.getElementById('voice').value, sentences: c.sentences, received: c.received, samples: c.samples,
      error: c.error ? c.error.message : null, log: window.rullamaApp.speech.log.filter(e => e.run === c.run).map(e => ({ what: e.what, voice: e.voice })) }; });
    await see('#speech-panel', 'read-aloud');

    // Export, import it back under another name, and a file of the wrong size.
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#clone-export')]);
    out.exported = { name: dl.suggestedFilename(), path: path.join(cfg.artifacts, `${cfg.scenario}-exported.bin`) };
    await dl.saveAs(out.exported.path);
    await page.setInputFiles('#clone-import', { name: `${cfg.imported}.bin`, mimeType: 'application/octet-stream', buffer: fs.readFileSync(out.exported.path) });
    await until(page, n => window.rullamaApp.clone.saved.some(v => v.name === n) || window.rullamaApp.clone.lastError, cfg.imported);
    out.picker_imported = await picker();
    await page.setInputFiles('#clone-import', { name: 'wrong.bin', mimeType: 'application/octet-stream', buffer: Buffer.alloc(1000) });
    out.errors.wrong_size = await cloneError();
    out.saved_after_wrong = (await C()).saved.map(v => v.name);
    await see('#clone-error', 'error-import');

    // A silent recording: refused, the target and the training stay.
    await dropFiles(page, '#clone-drop', [wav('silent.wav', cfg.silent_path)]);
    await until(page, () => window.rullamaApp.clone.log.filter(e => e.what === 'error').length >= 3);
    out.errors.silent = await app(page, () => ({ kind: document.getElementById('clone-error').dataset.kind, message: document.getElementById('clone-error-message').textContent }));
    out.after_silent = await C();
    await see('#clone-error', 'error-silent');

    // Reset: back to the start voice (the saved voice stays as it was).
    await page.click('#clone-reset');
    await until(page, () => window.rullamaApp.clone.log.some(e => e.what === 'reset') || window.rullamaApp.clone.lastError);
    out.reset = { ...(await C()), button: await page.textContent('#clone-train-button'), text: await page.textContent('#clone-status') };
    delete out.reset.target;
    await see('#clone-curve', 'reset');

    // A reload: the saved voices are still there, in the panel and in the picker.
    await page.reload();
    await until(page, () => window.rullamaApp && window.rullamaApp.started && window.rullamaApp.python);
    await until(page, n => window.rullamaApp.clone.saved.length >= n && document.querySelectorAll('#voice option').length > n, 2, 120000);
    await page.click('#clone-panel > summary');
    out.picker_reload = await picker();
    await see('#clone-saved-box', 'reloaded');
    await ctx.close();
    return out;
  },
};

let result;
try {
  result = { ok: true, ...(await scenarios[cfg.scenario]()) };
} catch (e) {
  result = { ok: false, error: String(e && e.stack || e) };
}
result.seconds = (Date.now() - t0) / 1000;
for (const d of profiles) fs.rmSync(d, { recursive: true, force: true });
console.log('RESULT:' + JSON.stringify(result));
process.exit(0);
