// Voice cloning: a new Kokoro voice trained from a recording, on this GPU (rullama_py.voice.VoiceTrainer through
// webapp's clone_* methods and the worker's clone-* ops). Nothing of the recording leaves the page.
//
// - The target: a dropped or chosen audio file (any audio the browser decodes: it is decoded here to 24 kHz mono;
//   a WAV file goes to Python as it is) or a microphone recording (level meter, elapsed time; 10-30 s is best).
//   Python checks it (too short, silent, clipped: a sentence), trims the silence and levels it; the panel draws
//   the waveform with the part kept, and "Play target" plays what the voice is compared with.
// - Training: Train starts a trainer with the options (training text, timbre only or the whole voice,
//   candidates per step, start voice, seed, steps) and runs in the worker, step by step, until the steps are done
//   or Pause; Resume goes on, Reset goes back to the start voice. The loss curve (log scale, the best so far, and
//   each step's candidate as a dot) is drawn as the steps arrive, with the step, steps per second and step size.
//   Changing an option and pressing Train again starts over with the new options.
// - Listening: "Play current voice" speaks the sample sentence with the best voice so far; "Play target" for A/B.
// - Keeping: Save under a name keeps the voice in IndexedDB (its own database, rullama-voices) with its loss
//   curve and settings; it is listed under "My voices" in the speech panel's picker, now and after a reload, and
//   added to the speech model whenever one loads. Export downloads a voicepack .bin (float32 [510, 256]: what
//   kokoro-js and `rullama say --voice-file` read); Import reads one back (checked: size and values).
//
// For tests and the curious, window.rullamaApp.clone holds the state: `target` (clone-target's result), `curve`
// (best loss per step, [0] = the start voice's), `losses` (each step's best candidate), `status`, `saved` (the
// kept voices, without their bytes), `log` (target / start / progress / paused / done / preview / saved /
// exported / imported / error entries with performance.now()) and `lastError`.

import { $, S } from './state.js';
import { call, on } from './worker-client.js';
import { captureGraph, decodeToMono, fmtClock, fmtDuration, isWavBytes, meterLevel, micSentence } from './audio.js';
import { ensureSpeech, redrawVoices, speak, voiceHooks } from './speech.js';

const RATE = 24000; // Kokoro's rate: what the target is compared at, and what the previews play at
const PACK_ROWS = 510, PACK_DIM = 256, PACK_BYTES = PACK_ROWS * PACK_DIM * 4; // a voicepack: float32 [510, 256]
const MAX_RECORD_SECONDS = 60; // the trainer keeps the first minute of voice
const DB_NAME = 'rullama-voices';
const DEFAULT_TEXT = 'The quick brown fox jumps over the lazy dog.\nShe sells sea shells, and a wise old owl hums a tune.';

const VC = (S.clone = { target: null, targetPcm: null, started: null, settings: null, curve: [], losses: [], steps: 0,
  status: 'empty', stepsPerSecond: null, stepSize: null, saved: [], log: [], lastError: null, run: 0 });

const now = () => performance.now();
const note = (what, extra = {}) => VC.log.push({ what, t: now(), ...extra });
let training = null; // the clone-train call's promise while the worker's loop runs
let rate = { t0: 0, s0: 0 }; // steps per second since Train or Resume
let audio = null;
let playing = null;
let db = null;
const packs = new Map(); // saved voice name -> its voicepack bytes (ArrayBuffer)

// -- errors -----------------------------------------------------------------------------------------------------

function showError(err) {
  VC.lastError = { kind: err.kind || 'internal', message: err.message || String(err), detail: err.detail || '' };
  note('error', { kind: VC.lastError.kind, message: VC.lastError.message });
  $('clone-error').hidden = false;
  $('clone-error').dataset.kind = VC.lastError.kind;
  $('clone-error-message').textContent = VC.lastError.message;
  $('clone-error-detail').textContent = VC.lastError.detail;
}

function clearError() {
  VC.lastError = null;
  $('clone-error').hidden = true;
  $('clone-error').dataset.kind = '';
}

const sentence = message => Object.assign(new Error(message), { kind: 'clone', message });

// -- the target -------------------------------------------------------------------------------------------------

// A file's audio for clone-target: a WAV file as it is (Python reads it, and says what is wrong with it), any
// other audio decoded by the browser to 24 kHz mono.
async function targetFromFile(file) {
  const bytes = await file.arrayBuffer();
  if (isWavBytes(new Uint8Array(bytes, 0, Math.min(12, bytes.byteLength)))) {
    return setTarget({ bytes, rate: 0, name: file.name, format: 'wav' });
  }
  let samples;
  try {
    samples = await decodeToMono(bytes, RATE);
  } catch {
    throw sentence(`${file.name} could not be decoded: this browser does not read that kind of audio, or the file is damaged. Convert it to WAV.`);
  }
  return setTarget({ bytes: samples.buffer, rate: RATE, name: file.name, format: 'f32' });
}

async function setTarget(args) {
  clearError();
  await pause();
  const before = VC.target;
  $('clone-target-info').textContent = `Reading ${args.name}…`;
  try {
    const r = await call('clone-target', args, [args.bytes]);
    VC.target = r;
    VC.started = null; // the next Train starts a trainer for this target
    resetCurve();
    note('target', { name: r.name, seconds: r.seconds });
    showTarget();
    return r;
  } catch (e) {
    if (!before) $('clone-target-info').textContent = '';
    else showTarget(); // the target before stays
    throw e;
  } finally {
    render();
  }
}

on('clone-target', e => { VC.targetPcm = new Float32Array(e.pcm); });

function showTarget() {
  const t = VC.target;
  $('clone-target').hidden = !t;
  if (!t) return;
  $('clone-target-name').textContent = t.name;
  const [a, b] = t.trimmed;
  const cut = a > 0.05 || b < t.input_seconds - 0.05 ? ` (${a.toFixed(1)}–${b.toFixed(1)} s of ${fmtDuration(t.input_seconds)} kept)` : '';
  $('clone-target-info').textContent = `${fmtDuration(t.voice_seconds)} of voice${cut}`;
  $('clone-warnings').textContent = (t.warnings || []).join(' ');
  $('clone-warnings').hidden = !(t.warnings || []).length;
  drawWave();
}

// The input's waveform (min/max per column); the parts trimmed as silence greyed.
function drawWave() {
  const t = VC.target, c = $('clone-wave');
  const g = c.getContext('2d');
  const w = c.width, h = c.height, env = t ? t.envelope : [];
  g.clearRect(0, 0, w, h);
  if (!env.length) return;
  const peak = Math.max(1e-3, ...env.map(([lo, hi]) => Math.max(-lo, hi)));
  const kept = [t.trimmed[0] / t.input_seconds, t.trimmed[1] / t.input_seconds];
  for (let i = 0; i < env.length; i++) {
    const x = (i / env.length) * w, f = (i + 0.5) / env.length;
    const [lo, hi] = env[i];
    g.fillStyle = f >= kept[0] && f <= kept[1] ? '#2f6fde' : '#c3c8d0';
    const y0 = h / 2 - (hi / peak) * (h / 2 - 1), y1 = h / 2 - (lo / peak) * (h / 2 - 1);
    g.fillRect(x, y0, Math.max(1, w / env.length), Math.max(1, y1 - y0));
  }
}

// -- recording from the microphone -----------------------------------------------------------------------------

let rec = null; // {stream, ctx, node, analyser, chunks, n, rate, timer}

async function startRecording() {
  if (rec) return;
  clearError();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return showError(sentence('This page cannot use the microphone here: browsers allow it on secure pages only (https, or localhost).'));
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  } catch (e) {
    return showError(sentence(micSentence(e)));
  }
  let g;
  try {
    g = await captureGraph(stream, RATE);
  } catch {
    for (const t of stream.getTracks()) t.stop();
    return showError(sentence('The microphone could not be recorded in this browser (its audio could not be captured).'));
  }
  const r = (rec = { stream, ...g, chunks: [], n: 0, rate: g.ctx.sampleRate });
  g.node.port.onmessage = ({ data }) => { r.chunks.push(data); r.n += data.length; };
  r.timer = setInterval(() => {
    const { level } = meterLevel(r.analyser);
    const seconds = r.n / r.rate;
    $('clone-rec-level-bar').style.width = `${(100 * level).toFixed(1)}%`;
    $('clone-rec-level').setAttribute('aria-valuenow', level.toFixed(3));
    $('clone-rec-time').textContent = fmtClock(seconds);
    if (seconds >= MAX_RECORD_SECONDS) stopRecording(true);
  }, 50);
  for (const t of stream.getAudioTracks()) t.onended = () => stopRecording(true);
  note('recording');
  renderRecorder();
}

async function closeRecording() {
  const r = rec;
  rec = null;
  clearInterval(r.timer);
  r.node.port.postMessage('stop');
  await new Promise(resolve => setTimeout(resolve, 60)); // the worklet hands over what it holds
  for (const t of r.stream.getTracks()) t.stop();
  r.ctx.close().catch(() => {});
  renderRecorder();
  return r;
}

async function stopRecording(keep) {
  if (!rec) return;
  const r = await closeRecording();
  if (!keep) return;
  const samples = new Float32Array(r.n);
  let at = 0;
  for (const c of r.chunks) { samples.set(c, at); at += c.length; }
  const t = new Date();
  const stamp = [t.getHours(), t.getMinutes(), t.getSeconds()].map(x => String(x).padStart(2, '0')).join('');
  try {
    await setTarget({ bytes: samples.buffer, rate: r.rate, name: `recording-${stamp}`, format: 'f32' });
  } catch (e) {
    showError(e);
  }
}

function renderRecorder() {
  $('clone-recorder').hidden = !rec;
  $('clone-record').disabled = !!rec;
  if (rec) $('clone-rec-time').textContent = fmtClock(0);
}

// -- training ---------------------------------------------------------------------------------------------------

function options() {
  const texts = $('clone-text').value.split('\n').map(t => t.trim()).filter(Boolean);
  return { texts, train: $('clone-train').value, population: Number($('clone-population').value) || 1,
    start: $('clone-start-voice').value || 'auto', seed: Number($('clone-seed').value) || 0 };
}

const budget = () => Math.max(1, Math.floor(Number($('clone-steps').value) || 1));

function resetCurve(curve = []) {
  VC.curve = [...curve];
  VC.losses = curve.length ? [null] : [];
  VC.steps = Math.max(0, curve.length - 1);
  VC.stepsPerSecond = null;
  drawCurve();
}

// Train: a new trainer when there is none or the options changed (the speech model loads first if needed),
// then the worker's loop until the steps are done or Pause.
async function train() {
  clearError();
  const opts = options();
  const fresh = !VC.started || JSON.stringify(opts) !== JSON.stringify(VC.settings);
  try {
    if (fresh) {
      VC.status = 'starting';
      render();
      status('Loading the speech model…');
      await ensureSpeech();
      status('Choosing the start voice…');
      const r = await call('clone-start', { options: opts });
      VC.started = r;
      VC.settings = opts;
      VC.stepSize = r.settings.step_size;
      resetCurve(r.curve);
      note('start', { start_voice: r.start_voice, start_loss: r.start_loss });
      if (r.warnings.length) {
        $('clone-warnings').hidden = false;
        $('clone-warnings').textContent = [...(VC.target.warnings || []), ...r.warnings].join(' ');
      }
    } else if (VC.steps >= budget()) {
      return status(`Done: ${VC.steps} steps. Raise "Steps" under Options to train further, or Reset.`);
    }
    await run();
  } catch (e) {
    VC.status = VC.started ? 'paused' : 'empty';
    showError(e);
    render();
  }
}

async function run() {
  if (training) await training.catch(() => {}); // the loop paused before must have ended
  VC.run += 1;
  VC.status = 'training';
  rate = { t0: now(), s0: VC.steps };
  render();
  training = call('clone-train', { run: VC.run, until: budget() });
  try {
    const r = await training;
    VC.status = r.done ? 'done' : 'paused';
    note(r.done ? 'done' : 'paused', { step: VC.steps });
  } catch (e) {
    VC.status = 'paused';
    if (e.detail === 'no trainer') VC.started = null; // the speech model changed: Train starts over
    showError(e);
  } finally {
    training = null;
    render();
  }
}

on('clone-progress', e => {
  if (e.run !== VC.run) return;
  if (e.waiting !== undefined) {
    VC.waiting = e.waiting;
    render();
    return;
  }
  for (const s of e.steps) {
    VC.curve[s.step] = s.best;
    VC.losses[s.step] = s.loss;
  }
  VC.steps = e.step;
  VC.stepSize = e.step_size;
  const dt = (now() - rate.t0) / 1000;
  VC.stepsPerSecond = dt > 0 ? (VC.steps - rate.s0) / dt : null;
  note('progress', { step: e.step, best: e.best });
  drawCurve();
  render();
});

// Pause: the step in progress finishes (on a slow GPU, seconds), then the loop ends.
async function pause() {
  if (!training) return;
  VC.status = 'pausing';
  render();
  await call('clone-pause');
  await training.catch(() => {});
}

async function reset() {
  clearError();
  if (!VC.started) return;
  await pause();
  try {
    const r = await call('clone-reset');
    resetCurve(r.curve);
    VC.stepSize = r.step_size;
    VC.status = 'paused';
    note('reset');
  } catch (e) {
    showError(e);
  }
  render();
}

// The loss curve: log scale, the best so far as a line, each step's best candidate as a dot.
function drawCurve() {
  const c = $('clone-curve');
  const g = c.getContext('2d');
  const w = c.width, h = c.height, pad = { l: 4, r: 4, t: 14, b: 14 };
  g.clearRect(0, 0, w, h);
  g.fillStyle = '#fafbfc';
  g.fillRect(0, 0, w, h);
  const best = VC.curve.filter(v => v > 0);
  if (!best.length) {
    g.fillStyle = '#6b7280';
    g.font = '11px system-ui, sans-serif';
    g.fillText('The loss curve appears here.', pad.l + 2, h / 2 + 4);
    return;
  }
  const all = [...best, ...VC.losses.filter(v => v > 0)];
  let top = Math.log10(Math.max(...all)), bottom = Math.log10(Math.min(...best));
  if (top - bottom < 0.05) { top += 0.025; bottom -= 0.025; }
  const n = Math.max(10, VC.curve.length - 1);
  const X = i => pad.l + (i / n) * (w - pad.l - pad.r);
  const Y = v => pad.t + ((top - Math.log10(v)) / (top - bottom)) * (h - pad.t - pad.b);
  g.strokeStyle = '#e4e7ec';
  g.lineWidth = 1;
  for (let d = Math.ceil(bottom); d <= Math.floor(top); d++) { // decades
    g.beginPath(); g.moveTo(pad.l, Y(10 ** d)); g.lineTo(w - pad.r, Y(10 ** d)); g.stroke();
  }
  g.fillStyle = '#b8bec8';
  VC.losses.forEach((v, i) => { if (v > 0) g.fillRect(X(i) - 1, Math.min(h - pad.b, Y(v)) - 1, 2, 2); });
  g.strokeStyle = '#2f6fde';
  g.lineWidth = 2;
  g.beginPath();
  VC.curve.forEach((v, i) => {
    if (i === 0) g.moveTo(X(0), Y(v));
    else { g.lineTo(X(i), Y(VC.curve[i - 1])); g.lineTo(X(i), Y(v)); }
  });
  g.stroke();
  g.fillStyle = '#1d2330';
  g.font = '10px system-ui, sans-serif';
  g.fillText(`loss ${fmtLoss(VC.curve[0])} (log scale)`, pad.l, 10);
  const last = VC.curve[VC.curve.length - 1];
  const label = `${fmtLoss(last)} at step ${VC.curve.length - 1}`;
  g.fillText(label, w - pad.r - g.measureText(label).width, h - 3);
}

const fmtLoss = v => (v >= 0.01 ? v.toFixed(4) : v.toExponential(2));
// Steps per second; on a slow GPU (under one a second) also the seconds a step takes.
const fmtRate = r => (r >= 10 ? `${r.toFixed(0)} steps/s` : r >= 1 ? `${r.toFixed(1)} steps/s` : `${r.toPrecision(2)} steps/s (${Math.round(1 / r)} s a step)`);

function status(text) {
  $('clone-status').textContent = text;
}

// Buttons and the status line for the state now.
function render() {
  const st = VC.status, has = !!VC.target, started = !!VC.started;
  const b = $('clone-train-button');
  b.textContent = st === 'training' ? 'Pause' : st === 'pausing' ? 'Pausing…' : started && st === 'paused' && VC.steps > 0 ? 'Resume' : 'Train';
  b.disabled = !has || st === 'starting' || st === 'pausing';
  b.classList.toggle('primary', st !== 'training' && st !== 'pausing');
  $('clone-reset').disabled = !started || st === 'starting' || VC.steps === 0;
  for (const id of ['clone-play-voice', 'clone-save', 'clone-export']) $(id).disabled = !started || st === 'starting';
  $('clone-play-target').disabled = !VC.targetPcm;
  if (st === 'starting') return;
  const from = $('clone-start-voice').value;
  if (!started) return status(has ? `Press Train to start from ${from && from !== 'auto' ? from : 'the nearest stock voice'}.` : '');
  const first = VC.curve[0], last = VC.curve[VC.curve.length - 1];
  const parts = [`Step ${VC.steps} of ${budget()}`, `loss ${fmtLoss(last)}` + (VC.steps ? ` (start ${fmtLoss(first)}, ${Math.round(100 * (last / first - 1))}%)` : '')];
  if (VC.stepsPerSecond > 0 && (st === 'training' || st === 'pausing')) parts.push(fmtRate(VC.stepsPerSecond));
  if (VC.stepSize != null) parts.push(`step size ${VC.stepSize.toFixed(3)}`);
  let text = `From ${VC.started.start_voice}. ` + parts.join(' · ');
  if (st === 'training' && VC.waiting === 'speech') text += ' · waiting while text is read aloud';
  if (st === 'pausing') text += ' · pausing after this step';
  if (st === 'paused') text += ' · paused';
  if (st === 'done') text += ' · done';
  status(text);
}

// -- listening --------------------------------------------------------------------------------------------------

function play(pcm) {
  if (!audio) audio = new AudioContext({ sampleRate: RATE });
  if (audio.state === 'suspended') audio.resume().catch(() => {});
  if (playing) { try { playing.stop(); } catch { /* ended */ } }
  const buf = audio.createBuffer(1, pcm.length, RATE);
  buf.copyToChannel(pcm, 0);
  const src = audio.createBufferSource();
  src.buffer = buf;
  src.connect(audio.destination);
  src.start();
  playing = src;
}

on('clone-audio', e => {
  VC.preview = { step: e.step, samples: e.samples, pcm: new Float32Array(e.pcm) };
  play(VC.preview.pcm);
});

async function playVoice() {
  clearError();
  if (!audio) audio = new AudioContext({ sampleRate: RATE }); // made from the click: allowed to play
  $('clone-play-voice').disabled = true;
  try {
    const r = await call('clone-preview', { text: $('clone-sample').value });
    note('preview', { step: r.step, samples: r.samples });
  } catch (e) {
    showError(e);
  } finally {
    render();
  }
}

// -- keeping voices: IndexedDB, the picker, export and import ------------------------------------------------------

function openDB() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore('voices', { keyPath: 'name' });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function store(mode, fn) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction('voices', mode);
    const req = fn(tx.objectStore('voices'));
    tx.oncomplete = () => resolve(req && req.result);
    tx.onerror = () => reject(tx.error);
  });
}

const describe = v => { const { pack, ...rest } = v; return rest; };

async function loadSaved() {
  const all = await store('readonly', s => s.getAll());
  for (const v of all) packs.set(v.name, v.pack);
  VC.saved = all.map(describe).sort((a, b) => a.name.localeCompare(b.name));
  showSaved();
  redrawVoices();
}

// Saves and imports one at a time (two quick imports of one file must not both take the same free name).
let keeping = Promise.resolve();
function serial(fn) {
  const p = keeping.then(fn, fn);
  keeping = p.catch(() => {});
  return p;
}

// Keep a voice (IndexedDB), add it to the speech model if one is loaded, and list it in the picker.
async function keep(record) {
  await store('readwrite', s => s.put(record));
  packs.set(record.name, record.pack);
  VC.saved = [...VC.saved.filter(v => v.name !== record.name), describe(record)].sort((a, b) => a.name.localeCompare(b.name));
  if (S.speech.loaded) await call('speech-add-voice', { name: record.name, bytes: record.pack.slice(0) });
  showSaved();
  redrawVoices({ select: record.name });
}

function checkName(name) {
  if (!name) throw sentence('Give the voice a name to save it under.');
  if (name.length > 40) throw sentence('That name is too long: use at most 40 characters.');
  const stock = (S.speech.listed ? S.speech.listed.names : []).filter(n => !packs.has(n));
  if (stock.includes(name)) throw sentence(`${name} is one of the speech model's own voices: choose another name.`);
}

async function currentPack() {
  const r = await call('clone-voice');
  return r.bytes.buffer.byteLength === r.bytes.byteLength ? r.bytes.buffer : r.bytes.slice().buffer;
}

async function save() {
  clearError();
  try {
    const name = $('clone-name').value.trim();
    checkName(name);
    const pack = await currentPack();
    await keep({ name, pack, curve: [...VC.curve], steps: VC.steps, loss: VC.curve[VC.curve.length - 1],
      start_voice: VC.started.start_voice, settings: VC.started.settings, target: VC.target && VC.target.name,
      created: Date.now() });
    note('saved', { name, steps: VC.steps });
    status(`Saved as "${name}": it is in the voice picker under My voices.`);
  } catch (e) {
    showError(e);
  }
}

function download(bytes, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  a.download = `${name.replace(/[^\p{L}\p{N}_ -]/gu, '').trim().replace(/ +/g, '_') || 'voice'}.bin`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
}

async function exportCurrent() {
  clearError();
  try {
    download(await currentPack(), $('clone-name').value.trim() || 'my_voice');
    note('exported', { name: $('clone-name').value.trim() });
  } catch (e) {
    showError(e);
  }
}

// A voicepack file read back: PACK_BYTES of finite float32 values, or a sentence saying what is wrong.
function checkPack(name, bytes) {
  if (bytes.byteLength !== PACK_BYTES) {
    throw sentence(`${name} is not a Kokoro voicepack: a voicepack holds ${PACK_ROWS} x ${PACK_DIM} float32 values (${PACK_BYTES.toLocaleString('en')} bytes), and this file has ${bytes.byteLength.toLocaleString('en')} bytes.`);
  }
  const x = new Float32Array(bytes);
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i]) || Math.abs(x[i]) > 1e3) throw sentence(`${name} is damaged: some of its values are not numbers or are far out of a voice's range.`);
  }
}

async function importFile(file) {
  clearError();
  try {
    const bytes = await file.arrayBuffer();
    checkPack(file.name, bytes);
    const base = file.name.replace(/\.[^.]+$/, '').trim() || 'imported';
    checkName(base);
    let name = base;
    for (let k = 2; packs.has(name); k++) name = `${base} (${k})`; // a saved voice is never replaced by an import
    await keep({ name, pack: bytes, curve: [], steps: 0, loss: null, start_voice: null, settings: null, target: null,
      imported: file.name, created: Date.now() });
    note('imported', { name });
    status(`Imported "${name}": it is in the voice picker under My voices.`);
  } catch (e) {
    showError(e);
  }
}

async function remove(name) {
  await store('readwrite', s => s.delete(name));
  packs.delete(name);
  VC.saved = VC.saved.filter(v => v.name !== name);
  showSaved();
  redrawVoices({ removed: name });
}

function showSaved() {
  const ul = $('clone-saved');
  ul.textContent = '';
  $('clone-saved-box').hidden = !VC.saved.length;
  for (const v of VC.saved) {
    const li = document.createElement('li');
    const label = document.createElement('span');
    label.className = 'name';
    label.textContent = v.name;
    label.title = v.imported ? `imported from ${v.imported}` : `${v.steps} steps from ${v.start_voice}, loss ${fmtLoss(v.loss)}`;
    const button = (text, title, fn) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = text;
      b.title = title;
      b.onclick = fn;
      return b;
    };
    li.append(label,
      button('Play', 'Read the sample sentence aloud with this voice', () => { redrawVoices({ select: v.name }); speak($('clone-sample').value, null); }),
      button('Export', 'Download as a voicepack .bin', () => download(packs.get(v.name), v.name)),
      button('Delete', 'Delete this voice from this browser', () => remove(v.name).catch(showError)));
    ul.append(li);
  }
}

// -- set-up -----------------------------------------------------------------------------------------------------

function onDrop(ev) {
  ev.preventDefault();
  ev.stopPropagation(); // the page's own drop handler would attach it to the chat
  document.body.classList.remove('dragging');
  $('clone-drop').classList.remove('over');
  const f = ev.dataTransfer && ev.dataTransfer.files[0];
  if (f) targetFromFile(f).catch(showError);
}

export async function setupVoiceClone() {
  voiceHooks.mine = () => [...packs.keys()];
  // A speech model that loads gets the saved voices (before anything is spoken with one of them).
  voiceHooks.loaded.push(async () => {
    let r = null;
    for (const [name, pack] of packs) r = await call('speech-add-voice', { name, bytes: pack.slice(0) });
    return r ? { voices: r.voices, unreadable: r.unreadable } : {};
  });
  const drop = $('clone-drop');
  drop.addEventListener('dragover', e => { e.preventDefault(); e.stopPropagation(); drop.classList.add('over'); document.body.classList.remove('dragging'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', onDrop);
  $('clone-file').onchange = () => { const f = $('clone-file').files[0]; $('clone-file').value = ''; if (f) targetFromFile(f).catch(showError); };
  $('clone-record').onclick = () => startRecording();
  $('clone-rec-stop').onclick = () => stopRecording(true);
  $('clone-rec-cancel').onclick = () => stopRecording(false);
  $('clone-play-target').onclick = () => { if (VC.targetPcm) play(VC.targetPcm); };
  $('clone-train-button').onclick = () => (VC.status === 'training' ? pause() : train());
  $('clone-reset').onclick = reset;
  $('clone-play-voice').onclick = playVoice;
  $('clone-save').onclick = () => serial(save);
  $('clone-export').onclick = exportCurrent;
  $('clone-import').onchange = () => { const f = $('clone-import').files[0]; $('clone-import').value = ''; if (f) serial(() => importFile(f)); };
  $('clone-steps').onchange = render;
  $('clone-start-voice').onchange = render;
  $('clone-options').addEventListener('toggle', fillStartVoices);
  $('clone-start-voice').addEventListener('focus', fillStartVoices);
  if (!$('clone-text').value) $('clone-text').value = DEFAULT_TEXT;
  render();
  drawCurve();
  try {
    db = await openDB();
    await loadSaved();
  } catch (e) {
    showError({ kind: 'storage', message: 'Saved voices cannot be kept: this browser does not give the page storage (IndexedDB).', detail: String(e) });
  }
}

// The start voices offered: the speech model's English stock voices (from its file's header before it loads).
function fillStartVoices() {
  const names = (S.speech.listed ? S.speech.listed.names : []).filter(n => /^[ab][fm]_/.test(n) && !packs.has(n));
  const sel = $('clone-start-voice');
  const want = sel.value || 'auto';
  sel.textContent = '';
  sel.append(new Option('the nearest', 'auto'), ...names.map(n => new Option(n, n)));
  sel.value = [...sel.options].some(o => o.value === want) ? want : 'auto';
}
