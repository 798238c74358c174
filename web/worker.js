// The app's worker: Pyodide with rullama_py (src/rullama_py/webapp.py does the model work), and the OPFS
// model cache (downloads in ranges, resumable). It runs in a worker so that Python, the GGUF parsing and the
// GPU submissions never block the page.
//
// Protocol with the page (documented in js/worker-client.js). Requests {id, op, ...} are answered by
// {reply: id, ok, value | error}; events are {event: name, ...} (boot, progress, memory, token, media, diffusion, download,
// speech-progress, speech-download, speech, clone-target, clone-audio, clone-progress). Model work (load, chat, diffuse, save, restore, new-chat, speech-load, and
// each sentence of speak) runs one request at a time, in order, on the one GPU device both models share;
// `stop`, `speech-stop` and `pause-download` act at once: between tokens, between a tower's layers, between
// sentences, or between chunks. A speak request queues one sentence at a time, so a chat request sent while a
// text is read aloud waits for the sentence being synthesised only, and the rest of the text follows the reply.
//
// A chat request's images and audio clips arrive as transferred ArrayBuffers; they go to Python as one list
// of Uint8Arrays, and each message's content as a list of parts naming them by index (see
// rullama_py.webapp.engine_messages).

const base = new URL('./', self.location.href); // the app's root: everything is fetched relative to it
let py = null;
let app = null; // the rullama_py.webapp.WebApp PyProxy
let booting = null;
let queue = Promise.resolve();
let download = null; // {abort: AbortController, paused: bool} while a download runs
let imageDecoder = null; // the promise of Pillow's loading, from the first image on
let resampler = null; // the promise of scipy's loading, from the first WAV file on
let speaking = 0; // the page's speak request being served (its run number); 0 when none

// Pyodide's wasm memory in bytes (it only grows, so this is also its peak), for tools that measure the page
// over the DevTools protocol (tools/check_fullsize_page.mjs): the module's variables are not reachable there.
self.rullamaWasmBytes = () => (py ? py._module.HEAP8.length : null);

const post = (msg, transfer = []) => self.postMessage(msg, transfer);
const emit = (event, payload) => post({ event, ...payload });

function exclusive(fn) {
  const p = queue.then(fn, fn);
  queue = p.catch(() => {});
  return p;
}

class AppError extends Error {
  constructor(kind, message, detail = '') {
    super(message);
    this.kind = kind;
    this.detail = detail;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Pyodide start-up: numpy and micropip from the served Pyodide distribution, our wheels with deps=False
// (everything is offline: micropip must not look for dependencies anywhere else).

async function boot() {
  if (!booting) {
    booting = (async () => {
      const t0 = performance.now();
      emit('boot', { text: 'Starting Python (Pyodide)' });
      const { loadPyodide } = await import(new URL('pyodide/pyodide.mjs', base).href);
      py = await loadPyodide({ indexURL: new URL('pyodide/', base).href });
      emit('boot', { text: 'Loading numpy' });
      await py.loadPackage(['numpy', 'micropip'], { messageCallback: () => {} });
      const resp = await fetch(new URL('wheels/index.json', base));
      if (!resp.ok) throw new AppError('boot', 'The app could not find its Python packages (wheels/index.json).');
      const wheels = (await resp.json()).wheels;
      emit('boot', { text: 'Installing rullama_py' });
      py.globals.set('WHEELS', wheels.map(w => new URL('wheels/' + w, base).href));
      await py.runPythonAsync('import micropip\nawait micropip.install(list(WHEELS), deps=False)');
      py.globals.delete('WHEELS');
      const webapp = py.pyimport('rullama_py.webapp');
      // Python's events; a "speech" event carries its float32 samples as a third argument (a Uint8Array
      // copied out of Python's memory), whose buffer is transferred to the page, not copied again.
      app = webapp.WebApp((event, payload, data) => {
        const msg = { event, ...JSON.parse(payload) };
        if (!data) return post(msg);
        const whole = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength;
        msg.pcm = whole ? data.buffer : data.slice().buffer;
        post(msg, [msg.pcm]);
      });
      webapp.destroy();
      const seconds = (performance.now() - t0) / 1000;
      emit('boot', { text: 'Python ready', ready: true, seconds });
      return { seconds, wheels };
    })();
    booting.catch(() => { booting = null; }); // a failed start may be retried
  }
  return booting;
}

// Python methods return JSON strings ({ok, ...} or {ok: false, error: {kind, message, detail}}).
async function pyCall(method, ...args) {
  await boot();
  const out = await app[method](...args);
  const r = typeof out === 'string' ? JSON.parse(out) : out;
  if (r && r.ok === false) throw new AppError(r.error.kind, r.error.message, r.error.detail + (r.trace ? '\n' + r.trace : ''));
  return r;
}

// The image decoder (Pillow, from the served Pyodide distribution, like numpy): loaded when the first image
// is attached or sent, so that loading a model does not wait for it.
function loadImageDecoder() {
  if (!imageDecoder) {
    imageDecoder = (async () => {
      await boot();
      const failed = [];
      try {
        await py.loadPackage(['pillow'], { messageCallback: () => {}, errorCallback: m => failed.push(m) });
      } catch (e) {
        failed.push(String(e && e.message || e));
      }
      const ok = py.runPython("import importlib.util\nimportlib.util.find_spec('PIL') is not None");
      if (!ok) {
        throw new AppError('image-decoder', 'This app cannot read images: its image decoder (Pillow) is missing from the '
          + "server's Python files. Run tools/setup.sh on the server, then reload the page.", failed.join('\n'));
      }
      return true;
    })();
    imageDecoder.catch(() => { imageDecoder = null; }); // a failed load may be retried
  }
  return imageDecoder;
}

// The resampler (scipy and its openblas, from the served Pyodide distribution): Python resamples WAV files
// that are not at 16 kHz with it (rullama_py.media.resample). Loaded when the first WAV file is attached or
// sent, like Pillow; clips the page decoded or recorded arrive at 16 kHz and do not need it.
function loadResampler() {
  if (!resampler) {
    resampler = (async () => {
      await boot();
      const failed = [];
      try {
        await py.loadPackage(['scipy'], { messageCallback: () => {}, errorCallback: m => failed.push(m) });
      } catch (e) {
        failed.push(String(e && e.message || e));
      }
      const ok = py.runPython("import importlib.util\nimportlib.util.find_spec('scipy') is not None");
      if (!ok) {
        throw new AppError('resampler', 'This app cannot resample audio: its resampler (scipy) is missing from the '
          + "server's Python files. Run tools/setup.sh on the server, then reload the page.", failed.join('\n'));
      }
      return true;
    })();
    resampler.catch(() => { resampler = null; }); // a failed load may be retried
  }
  return resampler;
}

// ---- Speech: text to phonemes (rullama_py.g2p) ----------------------------------------------------------
// Python's espeak-ng in the browser (rullama_py._backend.espeak_ipa calls self.rullamaEspeakIpa): npm phonemizer
// 1.2.1, espeak-ng compiled to JavaScript with English voices only, as kokoro-js uses it. The module (1.3 MB)
// is served at phonemizer/ from web/node_modules/phonemizer/dist and imported on the first call, i.e. when
// speech is first used. For each text, the IPA lines espeak writes (phonemizer's phonemize(text, voice)).
let phonemizer = null; // the promise of the phonemizer module, from the first call on
self.rullamaEspeakIpa = async (texts, voice) => {
  if (!phonemizer) {
    phonemizer = import(new URL('phonemizer/phonemizer.js', base).href);
    phonemizer.catch(() => { phonemizer = null; }); // a failed load may be retried
  }
  const { phonemize } = await phonemizer;
  const out = [];
  for (const text of texts) out.push(await phonemize(text, voice));
  return out;
};
// ---- end of speech ----------------------------------------------------------------------------------------

// The chat request for Python: message contents as parts naming media[k]: {type: 'image', ref: k, name},
// {type: 'audio', ref: k, name, format: 'wav' | 'f32'}; a message's images first, then its clips, then its text.
function chatArgs(messages) {
  const media = [];
  const ref = bytes => media.push(new Uint8Array(bytes)) - 1;
  const out = messages.map(m => {
    const images = m.images || [], audio = m.audio || [];
    if (!images.length && !audio.length) return { role: m.role, content: m.content };
    const parts = images.map(im => ({ type: 'image', ref: ref(im.bytes), name: im.name }));
    for (const a of audio) parts.push({ type: 'audio', ref: ref(a.bytes), name: a.name, format: a.format });
    if (m.content) parts.push({ type: 'text', text: m.content });
    return { role: m.role, content: parts };
  });
  const has = kind => out.some(m => Array.isArray(m.content) && m.content.some(p => p.type === kind && (kind !== 'audio' || p.format === 'wav')));
  return { json: JSON.stringify(out), media, images: has('image'), wav: has('audio') };
}

// ---------------------------------------------------------------------------------------------------------
// OPFS cache: models/<key>.gguf holds the bytes, models/<key>.json what is known about them:
// {key, url, name, size, etag, done, complete}. `done` only moves forward after the bytes before it were
// written and flushed, so an interrupted download (reload, closed tab, pause) resumes at `done`.

async function cacheDir() {
  const root = await navigator.storage.getDirectory();
  return root.getDirectoryHandle('models', { create: true });
}

async function cacheKey(url) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url));
  const hex = [...new Uint8Array(digest).slice(0, 8)].map(b => b.toString(16).padStart(2, '0')).join('');
  return hex;
}

async function readMeta(dir, key) {
  try {
    const file = await (await dir.getFileHandle(key + '.json')).getFile();
    return JSON.parse(await file.text());
  } catch {
    return null;
  }
}

async function writeMeta(dir, meta) {
  // createWritable writes a swap file and swaps it in on close: the record is never half written.
  const w = await (await dir.getFileHandle(meta.key + '.json', { create: true })).createWritable();
  await w.write(JSON.stringify(meta));
  await w.close();
}

function httpProblem(status, url) {
  if (status === 404) return new AppError('not-found', 'The model file was not found at that address (HTTP 404). Check the URL.', url);
  if (status === 200) return new AppError('no-range', 'That server sent the whole file instead of the part asked for: models are read in parts, so the server must support HTTP Range requests.', url);
  return new AppError('source', `The model server refused the request (HTTP ${status}).`, url);
}

async function fetchRange(url, first, last, signal, etag) {
  const headers = { Range: `bytes=${first}-${last}` };
  if (etag) headers['If-Range'] = etag; // if the file changed, the server answers 200 and we start over
  let r;
  try {
    r = await fetch(url, { headers, signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new AppError('unreachable', 'The model server could not be reached: nothing answered at that address, or it does not let this page read from it.', String(e));
  }
  if (r.status !== 206) {
    if (r.status === 200 && etag) throw new AppError('changed', 'The model file changed on the server since the download started; it will be downloaded again.');
    throw httpProblem(r.status, url);
  }
  return r;
}

// role: 'model' | 'mmproj' | 'kokoro'. The speech model's download reports as 'speech-download' (the speech
// panel shows it; the models panel's progress bar is the chat model's).
async function downloadToCache({ url, name, chunk, role, mmproj_url: mmprojUrl }) {
  if (download) throw new AppError('busy', 'A download is already running.');
  const ctl = { abort: new AbortController(), paused: false };
  download = ctl;
  let handle = null;
  let meta = null;
  try {
    const dir = await cacheDir();
    const key = await cacheKey(url);
    const probe = await fetchRange(url, 0, 0, ctl.abort.signal);
    const cr = /\/(\d+)\s*$/.exec(probe.headers.get('Content-Range') || '');
    await probe.arrayBuffer();
    if (!cr) throw new AppError('source', 'The model server did not say how large the file is (no Content-Range).', url);
    const size = Number(cr[1]);
    const etag = probe.headers.get('ETag') || '';
    meta = await readMeta(dir, key);
    if (!meta || meta.url !== url || meta.size !== size || (meta.etag || '') !== etag) {
      meta = { key, url, name: name || url.split('/').pop(), size, etag, done: 0, complete: false };
    }
    if (role === 'mmproj' || role === 'kokoro') meta.role = role;
    // a model remembers its vision projector, so that the cache list loads them together
    if (mmprojUrl) meta.mmproj = { key: await cacheKey(mmprojUrl), url: mmprojUrl, name: decodeURIComponent(mmprojUrl.split('/').pop()) };
    const est = await navigator.storage.estimate();
    const free = (est.quota || Infinity) - (est.usage || 0);
    if (size - meta.done > free) {
      throw new AppError('quota', `There is not enough browser storage for this model (it needs ${mb(size - meta.done)}, ${mb(free)} are free).`);
    }
    if (navigator.storage.persist) navigator.storage.persist().catch(() => {});
    const fh = await dir.getFileHandle(key + '.gguf', { create: true });
    // Shared with the reader a model loaded from this file keeps open (rullama_py.sources.OPFSSource.open_path).
    handle = await fh.createSyncAccessHandle({ mode: 'readwrite-unsafe' });
    if (meta.complete && handle.getSize() === size) {
      await writeMeta(dir, meta);
      return { ...meta, resumedFrom: size };
    }
    let done = Math.min(meta.done, handle.getSize());
    handle.truncate(done); // bytes past `done` were written but not recorded: fetch them again
    meta.done = done;
    meta.complete = false;
    await writeMeta(dir, meta);
    const resumedFrom = done;
    const step = Math.max(4096, Number(chunk) || 8 << 20);
    const t0 = performance.now();
    let lastEvent = 0;
    const event = role === 'kokoro' ? 'speech-download' : 'download';
    emit(event, { key, url, name: meta.name, role: meta.role, done, size, resumedFrom, secondsLeft: null });
    while (done < size) {
      if (ctl.paused) break;
      const last = Math.min(done + step, size) - 1;
      const r = await fetchRange(url, done, last, ctl.abort.signal, etag);
      const buf = new Uint8Array(await r.arrayBuffer());
      if (buf.length !== last - done + 1) throw new AppError('source', `The server sent ${buf.length} bytes for a ${last - done + 1}-byte part.`, url);
      handle.write(buf, { at: done });
      handle.flush();
      done += buf.length;
      meta.done = done;
      await writeMeta(dir, meta);
      const now = performance.now();
      if (now - lastEvent > 100 || done === size) {
        lastEvent = now;
        const rate = (done - resumedFrom) / ((now - t0) / 1000);
        emit(event, { key, url, name: meta.name, role: meta.role, done, size, resumedFrom, secondsLeft: rate > 0 ? (size - done) / rate : null });
      }
    }
    if (done === size) {
      meta.complete = true;
      await writeMeta(dir, meta);
    }
    return { ...meta, resumedFrom, paused: done < size };
  } catch (e) {
    if (e.name === 'AbortError') return { ...(meta || {}), paused: true };
    throw e;
  } finally {
    if (handle) handle.close();
    download = null;
  }
}

function mb(n) {
  return (n / 1e6).toFixed(1) + ' MB';
}

// The cached files: the chat models and their projectors, or with role 'kokoro' the speech model's copies
// (listed by the speech panel, not among the models a chat can load).
async function cacheList(role) {
  const dir = await cacheDir();
  const out = [];
  for await (const [name] of dir.entries()) {
    if (!name.endsWith('.json')) continue;
    const meta = await readMeta(dir, name.slice(0, -5));
    if (meta && (meta.role === 'kokoro') === (role === 'kokoro')) out.push(meta);
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

async function cacheDelete({ key }) {
  const dir = await cacheDir();
  for (const suffix of ['.gguf', '.json']) {
    try { await dir.removeEntry(key + suffix); } catch { /* already gone */ }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------------

// What Python opens for a source {kind, url | file | key}: a URL, a File, or a path in OPFS.
const sourceTarget = s => (s.kind === 'opfs' ? 'models/' + s.key + '.gguf' : s.kind === 'file' ? s.file : s.url);

// Read a text aloud: Python gets it ready (speak_start: voice and text checked), then each sentence is its own
// queued request (speak_next), so other model work (a chat) gets the GPU between two sentences. A newer speak
// request or speech-stop ends the loop: Python reports the old run as done (stopped) at its next sentence.
async function speak({ run, text, voice, speed, seed }) {
  speaking = run;
  await exclusive(() => pyCall('speak_start', String(text ?? ''), String(voice ?? ''), speed ?? 1, seed ?? 0, run));
  for (;;) {
    if (speaking !== run) app.speech_stop(run); // this run only: a newer one may have started already
    const r = await exclusive(() => pyCall('speak_next', run));
    if (r.done) {
      if (speaking === run) speaking = 0;
      return r;
    }
  }
}

// ---- Voice cloning (rullama_py.webapp's clone_* methods: voice.VoiceTrainer on the speech model) ----------
// Training is a loop of short queued requests (clone_step: at most ~0.15 s of work, at least one step), so a
// chat, a sentence read aloud or a pause waits for one call only. While a text is read aloud the loop waits
// (Kokoro is busy speaking; the trainer aligns its sentence again by itself afterwards) and then goes on.
const CLONE_STEP_SECONDS = 0.15;
let training = null; // {run, paused} while the clone-train loop runs

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// Train until `until` steps in all, or a pause: one 'clone-progress' event per call ({run, steps: [...], step,
// best, step_size, steps_per_second}), and {run, waiting: 'speech'} while reading aloud holds it. Resolves
// with the last call's result and why it ended (paused, done).
async function cloneTrain({ run, until }) {
  if (training) throw new AppError('busy', 'The voice is being trained already.');
  const t = (training = { run, paused: false });
  let last = null;
  try {
    for (;;) {
      if (t.paused) return { ...last, run, paused: true, done: false };
      if (speaking) {
        emit('clone-progress', { run, waiting: 'speech' });
        while (speaking && !t.paused) await sleep(100);
        if (!t.paused) emit('clone-progress', { run, waiting: null });
        continue;
      }
      const left = Math.max(1, (until || Infinity) - (last ? last.step : 0));
      last = await exclusive(() => pyCall('clone_step', Math.min(left, 1000), CLONE_STEP_SECONDS));
      emit('clone-progress', { run, ...last });
      if (until && last.step >= until) return { ...last, run, paused: false, done: true };
    }
  } finally {
    training = null;
  }
}

function pauseTraining() {
  if (training) training.paused = true;
}

// A WAV file, or samples at another rate than Kokoro's 24 kHz, is resampled by Python (scipy).
async function cloneTarget({ bytes, rate, name, format }) {
  pauseTraining(); // a new target ends the training of the old one
  if (format === 'wav' || Number(rate) !== 24000) await loadResampler();
  return exclusive(() => pyCall('clone_target', new Uint8Array(bytes), Number(rate) || 0, String(name || 'recording'), format || 'f32'));
}

const ops = {
  boot: () => boot(),
  load: msg => exclusive(async () => {
    const mm = msg.mmproj;
    return pyCall('load', msg.kind, sourceTarget(msg), JSON.stringify(msg.options || {}), mm ? mm.kind : null, mm ? sourceTarget(mm) : null);
  }),
  chat: msg => exclusive(async () => {
    const { json, media, images, wav } = chatArgs(msg.messages);
    if (images) {
      if (!imageDecoder) emit('media', { stage: 'decoder' });
      await loadImageDecoder();
    }
    if (wav) {
      if (!resampler) emit('media', { stage: 'resampler' });
      await loadResampler();
    }
    return pyCall('chat', json, JSON.stringify(msg.request || {}), media);
  }),
  // a diffusion model: one 'diffusion' event per denoising step; `stop` ends it after the step running.
  // Attachments go along so that Python can say in a sentence that this model reads text only.
  diffuse: msg => exclusive(() => {
    const { json, media } = chatArgs(msg.messages);
    return pyCall('diffuse', json, JSON.stringify(msg.request || {}), media);
  }),
  'prepare-images': () => loadImageDecoder(),
  'prepare-audio': () => loadResampler(),
  stop: async () => { if (app) app.stop(); return true; },
  'new-chat': () => exclusive(() => pyCall('new_chat')),
  stats: () => pyCall('stats'),
  memory: () => pyCall('memory'),
  'release-towers': () => exclusive(() => pyCall('release_towers')),
  save: () => exclusive(async () => {
    await boot();
    const bytes = await app.save_state();
    if (!bytes) return null;
    const identity = app.identity;
    return { bytes, identity };
  }),
  restore: msg => exclusive(() => pyCall('restore_state', msg.bytes)),
  download: msg => downloadToCache(msg),
  'pause-download': async () => {
    if (download) { download.paused = true; download.abort.abort(); }
    return true;
  },
  'cache-list': msg => cacheList(msg.role),
  'cache-delete': msg => cacheDelete(msg),
  // speech (Kokoro-82M, on the chat model's GPU device)
  'speech-load': msg => exclusive(() => pyCall('speech_load', msg.kind, sourceTarget(msg), JSON.stringify(msg.options || {}))),
  voices: msg => (msg.kind ? pyCall('speech_voices', msg.kind, sourceTarget(msg)) : pyCall('speech_voices')),
  'speech-add-voice': msg => pyCall('speech_add_voice', msg.name, new Uint8Array(msg.bytes)),
  speak: msg => speak(msg),
  'speech-stop': async () => {
    speaking = 0;
    if (app) app.speech_stop();
    return true;
  },
  // voice cloning
  'clone-target': msg => cloneTarget(msg),
  'clone-start': msg => { pauseTraining(); return exclusive(() => pyCall('clone_start', JSON.stringify(msg.options || {}))); },
  'clone-train': msg => cloneTrain(msg),
  'clone-pause': async () => { pauseTraining(); return true; },
  'clone-reset': () => { pauseTraining(); return exclusive(() => pyCall('clone_reset')); },
  'clone-voice': () => exclusive(async () => ({ bytes: await pyCall('clone_voice') })),
  'clone-preview': msg => exclusive(() => pyCall('clone_preview', String(msg.text ?? ''), msg.speed ?? 1)),
  'clone-release': () => { pauseTraining(); return exclusive(() => pyCall('clone_release')); },
};

self.onmessage = async ({ data }) => {
  const op = ops[data.op];
  try {
    if (!op) throw new AppError('internal', `unknown request ${data.op}`);
    const value = await op(data);
    const transfer = value && value.bytes instanceof Uint8Array ? [value.bytes.buffer] : [];
    post({ reply: data.id, ok: true, value }, transfer);
  } catch (e) {
    const error = e instanceof AppError
      ? { kind: e.kind, message: e.message, detail: e.detail }
      : { kind: 'internal', message: 'Something went wrong inside the app.', detail: String(e && e.stack || e) };
    post({ reply: data.id, ok: false, error });
  }
};
