// Audio for the chat: what an audio attachment holds, decoding compressed files in the page, WAV headers and
// WAV encoding, and recording from the microphone (the record button, its level meter and elapsed time).
//
// An audio attachment is {kind: 'audio', name, type, size, seconds, blob, pcm?}:
//   blob  the clip as the user gave it (a WAV, MP3, OGG, M4A or WebM file), or for a recording a 16-bit WAV
//         at 16 kHz; it is what the play button plays, and what IndexedDB keeps.
//   pcm   a Blob of float32 little-endian mono samples at 16 kHz: what is sent to Python for anything that
//         is not a WAV file (a compressed file decoded here, a recording). Kept in IndexedDB too, so that
//         every turn sends the very same samples (the engine recognises clips already in its KV cache by
//         their bytes). A WAV file has no pcm: its bytes go to Python, which decodes, downmixes and resamples
//         them itself (rullama_py.media, scipy's resample_poly).
// Compressed audio is decoded and resampled by the browser instead (decodeAudioData into an
// OfflineAudioContext at 16 kHz), and downmixed to mono by averaging the channels, as Python does for WAV.
// The browser's resampler differs slightly from scipy's, so the same sound sent as MP3 and as WAV gives
// features that differ in their last digits: fine for users; the native parity test sends a WAV.

import { $, S, textOnlySentence } from './state.js';
import { notice } from './ui.js';

export const RATE = 16000;
export const MAX_SECONDS = 600; // rullama_py.media.MAX_AUDIO_SECONDS: ten minutes a clip
const LEVEL_FLOOR_DB = -60; // the level meter's empty end; 0 dBFS fills it

const ascii = (b, at, n) => String.fromCharCode(...b.subarray(at, at + n));

export const isWavBytes = b => b.length >= 12 && ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 4) === 'WAVE';

// The duration of a WAV file from its header (fmt and data chunks), or null when the header cannot be read
// (Python says what is wrong with it when it is sent).
export function wavSeconds(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  if (!isWavBytes(b)) return null;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let pos = 12, rate = 0, align = 0;
  while (pos + 8 <= b.length) {
    const id = ascii(b, pos, 4), size = v.getUint32(pos + 4, true), body = pos + 8;
    if (id === 'fmt ' && body + 16 <= b.length) {
      rate = v.getUint32(body + 4, true);
      align = v.getUint16(body + 12, true);
    } else if (id === 'data') {
      if (!rate || !align) return null;
      return Math.floor(Math.min(size, b.length - body) / align) / rate;
    }
    pos = body + size + (size & 1);
  }
  return null;
}

// A WAV file of mono samples: 16-bit PCM (for playback and keeping: half the size) or 32-bit float.
export function wavBytes(samples, rate, float = false) {
  const width = float ? 4 : 2;
  const n = samples.length;
  const out = new ArrayBuffer(44 + n * width);
  const v = new DataView(out);
  const put = (at, s) => { for (let i = 0; i < s.length; i++) v.setUint8(at + i, s.charCodeAt(i)); };
  put(0, 'RIFF'); v.setUint32(4, 36 + n * width, true); put(8, 'WAVE');
  put(12, 'fmt '); v.setUint32(16, 16, true); v.setUint16(20, float ? 3 : 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, rate * width, true); v.setUint16(32, width, true);
  v.setUint16(34, 8 * width, true);
  put(36, 'data'); v.setUint32(40, n * width, true);
  if (float) new Float32Array(out, 44).set(samples);
  else for (let i = 0; i < n; i++) v.setInt16(44 + 2 * i, Math.round(Math.max(-1, Math.min(1, samples[i])) * 32767), true);
  return out;
}

// Mono 16 kHz float32 samples of any audio file the browser decodes. decodeAudioData in a 16 kHz
// OfflineAudioContext resamples to 16 kHz (the browser's own resampler); a second OfflineAudioContext at
// 16 kHz then renders the channels through a splitter and 1/n gains into its one channel: their average.
// Rejects when the browser cannot decode the file. decodeToMono: the same at another rate (the voice-clone
// panel's 24 kHz).
export const decodeTo16kMono = bytes => decodeToMono(bytes, RATE);

export async function decodeToMono(bytes, rate) {
  const decoded = await new OfflineAudioContext(1, 1, rate).decodeAudioData(bytes.slice(0)); // it detaches its input
  const k = decoded.numberOfChannels;
  if (k === 1 && decoded.sampleRate === rate) return decoded.getChannelData(0).slice();
  const n = Math.ceil(decoded.length * rate / decoded.sampleRate);
  const ctx = new OfflineAudioContext(1, Math.max(1, n), rate);
  const src = ctx.createBufferSource();
  src.buffer = decoded;
  const split = ctx.createChannelSplitter(k);
  src.connect(split);
  for (let c = 0; c < k; c++) {
    const g = ctx.createGain();
    g.gain.value = 1 / k;
    split.connect(g, c);
    g.connect(ctx.destination);
  }
  src.start();
  return (await ctx.startRendering()).getChannelData(0).slice(0, n);
}

export function fmtDuration(s) {
  if (s == null || !isFinite(s)) return 'length unknown';
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60), r = Math.round(s - 60 * m);
  return r === 60 ? `${m + 1}:00` : `${m}:${String(r).padStart(2, '0')}`;
}

function clipFromSamples(name, samples) {
  const blob = new Blob([wavBytes(samples, RATE)], { type: 'audio/wav' });
  return { kind: 'audio', name, type: 'audio/wav', size: blob.size, seconds: samples.length / RATE, blob,
    pcm: new Blob([samples]) };
}

// An audio attachment of a file's bytes, or a sentence (a thrown Error with .sentence) saying why not.
export async function audioFromFile(name, type, bytes) {
  const b = new Uint8Array(bytes);
  if (isWavBytes(b) || /^audio\/(wav|x-wav|wave|vnd\.wave)$/.test(type) || (!type && /\.wav$/i.test(name))) {
    // Python reads it (and says what is wrong with a damaged one); only the duration is read here.
    return { kind: 'audio', name, type: type || 'audio/wav', size: b.length, seconds: wavSeconds(b), blob: new Blob([bytes], { type: type || 'audio/wav' }) };
  }
  let samples;
  try {
    samples = await decodeTo16kMono(bytes);
  } catch {
    throw Object.assign(new Error(name), { sentence: `${name} could not be decoded: this browser does not read that kind of audio, or the file is damaged. Convert it to WAV.` });
  }
  if (samples.length / RATE > MAX_SECONDS) {
    throw Object.assign(new Error(name), { sentence: `${name} is too long: it holds ${fmtDuration(samples.length / RATE)} of audio, and at most 10 minutes is accepted. Use a shorter clip.` });
  }
  const blob = new Blob([bytes], { type: type || 'application/octet-stream' });
  return { kind: 'audio', name, type: type || blob.type, size: b.length, seconds: samples.length / RATE, blob, pcm: new Blob([samples]) };
}

// -- recording ----------------------------------------------------------------------------------------------

let rec = null; // the running recording: {stream, ctx, node, analyser, chunks, n (samples), rate, timer}
let onRecorded = () => {};

export function micSentence(e) {
  const name = e && e.name;
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
    return "The microphone was not allowed, so nothing was recorded. Allow it for this page in the browser's site settings, then press Record again.";
  }
  if (name === 'NotFoundError' || name === 'OverconstrainedError' || name === 'DevicesNotFoundError') {
    return 'No microphone was found, so nothing was recorded. Connect one, then press Record again.';
  }
  if (name === 'NotReadableError' || name === 'AbortError') {
    return 'The microphone could not be started (another program may be using it), so nothing was recorded.';
  }
  return 'The microphone could not be started, so nothing was recorded.';
}

// The capture graph: microphone -> analyser (the level meter) and -> a worklet that hands the samples over.
// A 16 kHz AudioContext lets the browser resample the microphone itself; a browser that cannot connect a
// microphone to a context of another rate gets one at its own rate, and the samples are resampled when the
// recording stops (as a float WAV, through decodeTo16kMono). The voice-clone panel records at its own `rate`.
export async function captureGraph(stream, rate = RATE) {
  for (const opts of [{ sampleRate: rate }, {}]) {
    let ctx = null;
    try {
      ctx = new AudioContext(opts);
      const source = ctx.createMediaStreamSource(stream);
      await ctx.audioWorklet.addModule(new URL('./capture-worklet.js', import.meta.url));
      const node = new AudioWorkletNode(ctx, 'rullama-capture', { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 2048;
      source.connect(analyser);
      source.connect(node);
      node.connect(ctx.destination); // silent (the worklet writes no output): it keeps the node pulled
      await ctx.resume();
      return { ctx, node, analyser };
    } catch (e) {
      if (ctx) ctx.close().catch(() => {});
      if (!opts.sampleRate) throw e;
    }
  }
  return null; // not reached
}

function renderRecorder() {
  const on = !!rec;
  $('recorder').hidden = !on;
  $('record').disabled = on;
  $('record').classList.toggle('recording', on);
}

// The microphone's level now: the RMS of the analyser's last block, and its place on the meter (0 at
// LEVEL_FLOOR_DB, 1 at 0 dBFS).
export function meterLevel(a) {
  const x = new Float32Array(a.fftSize);
  a.getFloatTimeDomainData(x);
  let sum = 0;
  for (const v of x) sum += v * v;
  const rms = Math.sqrt(sum / x.length);
  const db = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
  return { rms, level: Math.max(0, Math.min(1, (db - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB)) };
}

function tick() {
  const { rms, level } = meterLevel(rec.analyser);
  const seconds = rec.n / rec.rate;
  $('rec-level-bar').style.width = `${(100 * level).toFixed(1)}%`;
  $('rec-level').setAttribute('aria-valuenow', level.toFixed(3));
  $('rec-time').textContent = fmtClock(seconds);
  S.recording = { seconds, level, rms, levels: [...S.recording.levels.slice(-199), level] };
  if (seconds >= MAX_SECONDS) {
    notice('The recording reached 10 minutes, the longest clip the model takes, and was stopped.');
    stopRecording();
  }
}

export const fmtClock = s => `${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, '0')}`;

let starting = false; // between the Record click and the microphone's answer: a second click does nothing

export async function startRecording() {
  if (rec || starting) return;
  starting = true;
  try {
    await start();
  } finally {
    starting = false;
  }
}

async function start() {
  if (!S.model) return notice('Load a model first: recording makes an audio attachment for it.');
  if (textOnlySentence('audio')) return notice(textOnlySentence('audio'));
  if (!S.model.has_audio) {
    return notice('This model has no audio input, so there is nothing to record for. Load a Gemma 4 model that hears audio, or add its projector (mmproj).');
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return notice('This page cannot use the microphone here: browsers allow it on secure pages only (https, or localhost).');
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  } catch (e) {
    console.warn('getUserMedia:', e && e.name, e && e.message);
    return notice(micSentence(e));
  }
  let g;
  try {
    g = await captureGraph(stream);
  } catch (e) {
    for (const t of stream.getTracks()) t.stop();
    console.warn('capture graph:', e);
    return notice('The microphone could not be recorded in this browser (its audio could not be captured).');
  }
  const r = (rec = { stream, ...g, chunks: [], n: 0, rate: g.ctx.sampleRate });
  g.node.port.onmessage = ({ data }) => { r.chunks.push(data); r.n += data.length; };
  S.recording = { seconds: 0, level: 0, rms: 0, levels: [] };
  notice('');
  renderRecorder();
  rec.timer = setInterval(tick, 50);
  for (const t of stream.getAudioTracks()) t.onended = () => stopRecording(); // the microphone went away
}

async function closeRecording() {
  const r = rec;
  rec = null;
  clearInterval(r.timer);
  r.node.port.postMessage('stop');
  // Let the worklet hand over what it holds (it flushes on 'stop').
  await new Promise(resolve => setTimeout(resolve, 60));
  for (const t of r.stream.getTracks()) t.stop();
  r.ctx.close().catch(() => {});
  S.recording = null;
  renderRecorder();
  return r;
}

// Stop and attach the recording (returns the attachment, or null when nothing was recorded).
export async function stopRecording() {
  if (!rec) return null;
  const r = await closeRecording();
  let samples = new Float32Array(r.n);
  let at = 0;
  for (const c of r.chunks) { samples.set(c, at); at += c.length; }
  if (r.rate !== RATE && samples.length) samples = await decodeTo16kMono(wavBytes(samples, r.rate, true));
  if (samples.length < RATE / 10) {
    notice('Nothing was recorded (the recording was shorter than a tenth of a second).');
    return null;
  }
  const t = new Date();
  const stamp = [t.getHours(), t.getMinutes(), t.getSeconds()].map(x => String(x).padStart(2, '0')).join('');
  const clip = clipFromSamples(`recording-${stamp}.wav`, samples);
  clip.recorded = true;
  onRecorded(clip);
  return clip;
}

export async function discardRecording() {
  if (rec) await closeRecording();
}

export const isRecording = () => !!rec;

export function setupRecorder(attach) {
  onRecorded = attach;
  $('record').onclick = () => startRecording();
  $('rec-stop').onclick = () => stopRecording();
  $('rec-cancel').onclick = () => discardRecording();
}
