// Speech: replies read aloud with Kokoro-82M, on the same GPU device as the chat model (rullama_py.webapp's
// speech_* methods, through the worker's speech-load / speak / speech-stop ops).
//
// - The panel (in the settings column): the voice picker, grouped by language and gender from the voice
//   name's prefix (af_heart = American English, female); the speed; "Speak replies" (every finished reply
//   is read aloud); "Keep a copy in this browser" for the speech model; a box to read any text aloud; a voice
//   file (a kokoro-js .bin voicepack) to add; another Kokoro file to use instead of the server's.
// - A "Read aloud" button on every assistant reply (added through chat.js's messageHooks).
// - The player bar above the status line: what is being read, Stop, and "Download WAV" of all the audio of
//   the text (16-bit PCM at 24 kHz).
//
// Kokoro loads the first time speech is used (a click on Read aloud, or the first reply with Speak replies
// on), with its own progress: from the browser's copy (OPFS) when "Keep a copy" is ticked (downloaded once,
// through the same resumable download as the chat models), else from the server by HTTP Range requests.
// The worker synthesises the text sentence by sentence; each sentence's float32 samples arrive as a `speech`
// event and go to the end of a queue of AudioBuffers in one AudioContext at 24 kHz, so the first sentence
// plays while the next ones are synthesised. Stop ends playback at once and synthesis after the sentence in
// progress. The seed is fixed (0): the same text, voice and speed give the same audio every time.
//
// For tests and the curious, window.rullamaApp.speech holds the state: `log` (synth / play / ended / done /
// stop / error entries with the run, the sentence index and performance.now()), `current` (the text being read:
// its run and the float32 samples of each sentence), `loaded` (the speech-load result) and `voices`.

import { $, S, mb, secs } from './state.js';
import { call, on } from './worker-client.js';
import { persistSettings, settings } from './settings.js';
import { messageHooks } from './chat.js';
import { fmtDuration, wavBytes } from './audio.js';

const RATE = 24000; // Kokoro's sample rate (the speech-load result says it too)
const DEFAULT_VOICE = 'af_heart';
const SEED = 0;

// Kokoro's voice prefixes: language (first letter) and gender (second letter).
const LANGUAGES = { a: 'American English', b: 'British English', e: 'Spanish', f: 'French', h: 'Hindi',
  i: 'Italian', j: 'Japanese', p: 'Brazilian Portuguese', z: 'Mandarin Chinese' };
const GENDERS = { f: 'female', m: 'male' };

const SP = (S.speech = { loaded: null, loading: false, voices: [], server: null, copy: null, log: [], current: null });

let loading = null; // the promise of the speech model's load, while it runs
let nextRun = 1;
let kokoroFile = null; // a Kokoro .gguf the user picked: loaded instead of the server's file
let audio = null; // the AudioContext (made on the first use)
const player = { sources: [], end: 0, timers: [] };

// The voice-clone panel's saved voices (voiceclone.js): `mine()` names them (the picker lists them under "My
// voices", before the speech model loads too) and each `loaded` function runs after a speech model loads (it
// adds them to it), before anything is spoken.
export const voiceHooks = { mine: () => [], loaded: [] };

const now = () => performance.now();
// A loudspeaker drawn inline (headless and minimal systems have no emoji font).
const SPEAKER_SVG = '<svg class="icon" viewBox="0 0 16 16" aria-hidden="true"><path d="M2 6h3l4-3v10l-4-3H2z" fill="currentColor"/>'
  + '<path d="M11 5.5a3.5 3.5 0 0 1 0 5M12.5 3.5a6 6 0 0 1 0 9" stroke="currentColor" stroke-width="1.3" fill="none" stroke-linecap="round"/></svg>';
const STOP_SVG = '<svg class="icon" viewBox="0 0 16 16" aria-hidden="true"><rect x="4" y="4" width="8" height="8" fill="currentColor"/></svg>';
const buttonLabel = (b, reading) => {
  b.innerHTML = (reading ? STOP_SVG : SPEAKER_SVG) + `<span>${reading ? 'Stop reading' : 'Read aloud'}</span>`;
  b.classList.toggle('active', reading);
};
const note = (what, extra = {}) => SP.log.push({ what, t: now(), ...extra });

// -- the voice picker ----------------------------------------------------------------------------------------

// "af_heart" -> {group: "American English · female", label: "Heart"}; a name without Kokoro's prefix (a voice
// added from a file) goes to "Added voices".
export function describeVoice(name) {
  if (voiceHooks.mine().includes(name)) return { group: 'My voices', label: name };
  const m = /^([a-z])([fm])_(.+)$/.exec(name);
  if (!m || !LANGUAGES[m[1]]) return { group: 'Added voices', label: name };
  const label = m[3].replace(/(^|_)([a-z])/g, (_, sep, c) => (sep ? ' ' : '') + c.toUpperCase());
  return { group: `${LANGUAGES[m[1]]} · ${GENDERS[m[2]]}`, label };
}

// `unreadable`: voices whose language this page cannot read (npm phonemizer has English only), shown disabled.
function fillVoices(names, unreadable = []) {
  SP.listed = { names: [...names], unreadable: [...unreadable] }; // the model's (or its file's) own list
  names = [...new Set([...names, ...voiceHooks.mine()])];
  SP.voices = [...names];
  const off = new Set(unreadable);
  const sel = $('voice');
  const want = sel.value || settings.voice || DEFAULT_VOICE;
  sel.textContent = '';
  const groups = new Map();
  for (const n of names) {
    const { group, label } = describeVoice(n);
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push({ n, label });
  }
  // My voices, then Kokoro's order of languages, then added voices; within a group by name.
  const order = g => { const i = Object.values(LANGUAGES).indexOf(g.split(' · ')[0]); return g === 'My voices' ? -1 : i < 0 ? 99 : i; };
  for (const g of [...groups.keys()].sort((a, b) => order(a) - order(b) || a.localeCompare(b))) {
    const og = document.createElement('optgroup');
    const voices = groups.get(g).sort((a, b) => a.n.localeCompare(b.n));
    og.label = voices.every(v => off.has(v.n)) ? `${g} (not readable here)` : g;
    for (const { n, label } of voices) {
      const o = document.createElement('option');
      o.value = n;
      o.textContent = label === n ? n : `${label} (${n})`;
      o.disabled = off.has(n);
      og.append(o);
    }
    sel.append(og);
  }
  if (!names.length) {
    const o = document.createElement('option');
    o.value = '';
    o.textContent = 'No voices yet';
    sel.append(o);
  }
  const usable = names.filter(n => !off.has(n));
  sel.value = usable.includes(want) ? want : usable.includes(DEFAULT_VOICE) ? DEFAULT_VOICE : usable[0] || '';
}

// The picker again (the voice-clone panel saved, imported or deleted a voice); `select` becomes the choice.
// `removed`: a voice deleted there (the speech model may still hold it: it is no longer listed).
export function redrawVoices({ select = null, removed = null } = {}) {
  const listed = SP.listed || { names: [], unreadable: [] };
  fillVoices(listed.names.filter(n => n !== removed), listed.unreadable);
  if (select && SP.voices.includes(select)) {
    $('voice').value = select;
    settings.voice = select;
    persistSettings();
  }
}

// The voices before the speech model is loaded: from the Kokoro file's header (a few ranges, no weights).
export async function refreshVoices() {
  try {
    const r = SP.loaded ? await call('voices') : await speechSource({ probe: true }).then(src => src && call('voices', src));
    if (r) fillVoices(r.voices, r.unreadable);
  } catch (e) {
    console.warn('voices not listed:', e.message);
  }
}

// -- where the speech model comes from ------------------------------------------------------------------------

async function serverSpeech() {
  try {
    const r = await fetch('api/models');
    const j = r.ok ? await r.json() : {};
    SP.server = j.kokoro ? { url: new URL(j.kokoro, location.href).href, name: j.kokoro_name, size: j.kokoro_size,
      available: !!j.kokoro_available } : null;
  } catch {
    SP.server = null;
  }
  return SP.server;
}

async function browserCopy() {
  try {
    const items = await call('cache-list', { role: 'kokoro' });
    SP.copy = items.find(m => m.complete) || items[0] || null;
  } catch {
    SP.copy = null;
  }
  showCopy();
  return SP.copy;
}

// The source to load: a picked file; the browser's copy (downloaded first when "Keep a copy" is ticked);
// the server's file. `probe`: only where the header can be read now (no download).
async function speechSource({ probe = false } = {}) {
  if (kokoroFile) return { kind: 'file', file: kokoroFile, name: kokoroFile.name };
  const server = SP.server || (await serverSpeech());
  const copy = await browserCopy();
  const keep = $('speech-keep-copy').checked;
  if (copy && copy.complete && (keep || !server || !server.available || copy.url === (server && server.url))) {
    return { kind: 'opfs', key: copy.key, name: copy.name };
  }
  if (server && server.available) {
    if (!keep || probe) return { kind: 'url', url: server.url, name: server.name };
    const d = await call('download', { url: server.url, name: server.name, role: 'kokoro' });
    await browserCopy();
    if (d.paused) throw Object.assign(new Error('The speech model download was paused.'), { kind: 'speech-load', message: 'The speech model download was paused; it resumes when speech is used again.' });
    return { kind: 'opfs', key: d.key, name: d.name };
  }
  if (probe) return null;
  throw Object.assign(new Error('no speech model'), { kind: 'speech-load',
    message: 'No speech model is available: this server has no Kokoro file (run tools/setup.sh on it), and this browser keeps no copy. Choose a Kokoro .gguf file under "More".' });
}

// Load the speech model once (the first use), with its progress in the panel and the player bar.
export function ensureSpeech() {
  if (SP.loaded) return Promise.resolve(SP.loaded);
  if (!loading) {
    loading = (async () => {
      SP.loading = true;
      note('load');
      speechProgress(null, 'Loading the speech model…');
      try {
        const src = await speechSource();
        const info = await call('speech-load', { ...src, file: src.file, options: { name: src.name } });
        info.source = src.kind;
        for (const fn of voiceHooks.loaded) Object.assign(info, await fn(info)); // e.g. {voices} with my voices
        SP.loaded = info;
        fillVoices(info.voices, info.unreadable);
        note('loaded', { seconds: info.load_seconds });
        speechProgress(1, `Speech ready: ${info.name} (${info.voices.length} voices) loaded in ${info.load_seconds.toFixed(1)} s`);
        $('speech-status').textContent = `${info.name} · ${info.voices.length} voices`;
        return info;
      } catch (e) {
        $('speech-progress').hidden = true;
        throw e;
      } finally {
        SP.loading = false;
        loading = null;
      }
    })();
  }
  return loading;
}

function speechProgress(fraction, text) {
  $('speech-progress').hidden = false;
  const bar = $('speech-progress-bar');
  if (fraction == null) bar.removeAttribute('value');
  else bar.value = Math.max(0, Math.min(1, fraction));
  $('speech-progress-text').textContent = text;
  if (SP.current && !SP.current.sentences) playerText(text);
}

on('speech-progress', e => {
  SP.progress = e;
  if (e.phase === 'kokoro-weights') {
    const parts = [`${mb(Math.min(e.fetched, e.file_size))} of ${mb(e.file_size)}`];
    if (e.seconds_left != null && e.fetched < e.file_size) parts.push(secs(e.seconds_left));
    speechProgress(e.fetched / e.file_size, `Loading the speech model: ${parts.join(' · ')}`);
  } else if (e.phase === 'kokoro-open') {
    speechProgress(null, 'Opening the speech model…');
  }
});

on('speech-download', e => {
  SP.download = e;
  const resumed = e.resumedFrom > 0 ? ` (resumed at ${mb(e.resumedFrom)})` : '';
  const left = e.done < e.size ? ' · ' + secs(e.secondsLeft) : '';
  speechProgress(e.done / e.size, `Keeping a copy of the speech model: ${mb(e.done)} of ${mb(e.size)}${resumed}${left}`);
});

function showCopy() {
  const c = SP.copy;
  $('speech-copy').hidden = !c;
  if (c) $('speech-copy-text').textContent = `Kept in this browser: ${c.name}, ${c.complete ? mb(c.size) : `${mb(c.done)} of ${mb(c.size)}`}`;
}

// -- playback: a queue of AudioBuffers ----------------------------------------------------------------------

function audioContext() {
  if (!audio) audio = new AudioContext({ sampleRate: RATE, latencyHint: 'playback' });
  if (audio.state === 'suspended') audio.resume().catch(() => {});
  return audio;
}

// Play `pcm` after what is queued (or now). Each sentence ends in Kokoro's own pause: no gap is added.
function enqueue(cur, index, pcm) {
  const ctx = audioContext();
  const buf = ctx.createBuffer(1, pcm.length, RATE);
  buf.copyToChannel(pcm, 0);
  const src = ctx.createBufferSource();
  src.buffer = buf;
  src.connect(ctx.destination);
  const at = Math.max(ctx.currentTime + 0.02, player.end);
  src.start(at);
  player.end = at + buf.duration;
  player.sources.push(src);
  // "play" is logged when the audio clock reaches the sentence (not when a timer says it should have).
  const started = () => {
    if (SP.current !== cur || cur.stopped) return;
    const lag = at - ctx.currentTime;
    if (lag > 0.005) {
      player.timers.push(setTimeout(started, lag * 1000 + 5));
      return;
    }
    note('play', { run: cur.run, index, clock: ctx.currentTime, state: ctx.state });
    cur.playing = index;
    playerText(`Reading aloud: sentence ${index + 1}${cur.done ? ` of ${cur.sentences}` : ''} · ${cur.pcm[index] ? fmtDuration(cur.pcm[index].length / RATE) : ''}`);
  };
  started();
  src.onended = () => {
    if (SP.current !== cur || cur.stopped) return;
    note('ended', { run: cur.run, index });
    if (cur.done && index === cur.sentences - 1) finishPlayback(cur);
  };
}

function silence() {
  for (const s of player.sources) { try { s.stop(); } catch { /* not started */ } }
  for (const t of player.timers) clearTimeout(t);
  player.sources = [];
  player.timers = [];
  player.end = 0;
}

function finishPlayback(cur) {
  cur.finished = true;
  playerText(`Read aloud: ${cur.sentences} sentence${cur.sentences === 1 ? '' : 's'}, ${fmtDuration(cur.samples / RATE)}`);
  $('speech-stop').disabled = true;
  markButton(cur, false);
}

// -- speaking -----------------------------------------------------------------------------------------------

on('speech', e => {
  const cur = SP.current;
  if (!cur || e.run !== cur.run || cur.stopped) return; // a stopped or replaced text's late sentence
  const pcm = new Float32Array(e.pcm);
  cur.pcm[e.index] = pcm;
  cur.texts[e.index] = e.text;
  cur.durations[e.index] = e.durations;
  cur.samples += pcm.length;
  cur.received = e.index + 1;
  note('synth', { run: cur.run, index: e.index, samples: pcm.length, synth_seconds: e.synth_seconds });
  $('speech-download').disabled = false;
  enqueue(cur, e.index, pcm);
  if (cur.playing == null) playerText(`Reading aloud: sentence ${e.index + 1}…`);
});

// Read `text` aloud with the chosen voice and speed (stopping what was being read). `origin`: the reply's
// message object (its button shows Stop while it is read), or null for the panel's text box.
export async function speak(text, origin = null) {
  stopSpeech();
  clearSpeechError();
  audioContext(); // made (or resumed) now: this runs from a click or right after one
  const cur = { run: nextRun++, text, origin, pcm: [], texts: [], durations: [], samples: 0, received: 0, sentences: 0,
    done: false, stopped: false, finished: false, playing: null };
  SP.current = cur;
  $('speech-player').hidden = false;
  $('speech-stop').disabled = false;
  $('speech-download').disabled = true;
  markButton(cur, true);
  playerText('Getting ready to read aloud…');
  try {
    await ensureSpeech();
    if (cur.stopped) return cur;
    const voice = $('voice').value;
    const speed = parseFloat($('speech-speed').value) || 1;
    note('speak', { run: cur.run, voice, speed, chars: text.length });
    playerText('Synthesising the first sentence…');
    const r = await call('speak', { run: cur.run, text, voice, speed, seed: SEED });
    cur.result = r;
    note('done', { run: cur.run, sentences: r.sentences, stopped: r.stopped }); // also for a stopped text
    if (SP.current !== cur || cur.stopped) return cur;
    cur.done = true;
    cur.sentences = r.sentences;
    if (cur.received === cur.sentences && player.end <= audioContext().currentTime) finishPlayback(cur);
  } catch (e) {
    if (SP.current === cur) {
      cur.error = e;
      note('error', { run: cur.run, kind: e.kind });
      showSpeechError(e);
      markButton(cur, false);
      if (!cur.received) $('speech-player').hidden = true;
      $('speech-stop').disabled = true;
    }
  }
  return cur;
}

// Stop reading aloud: the audio now, the synthesis after the sentence in progress.
export function stopSpeech() {
  const cur = SP.current;
  if (!cur || cur.stopped || cur.finished) return;
  cur.stopped = true;
  note('stop', { run: cur.run, received: cur.received });
  silence();
  call('speech-stop').catch(() => {});
  markButton(cur, false);
  $('speech-stop').disabled = true;
  playerText(cur.received ? `Stopped after ${cur.received} sentence${cur.received === 1 ? '' : 's'}.` : 'Stopped.');
}

function playerText(t) {
  $('speech-now').textContent = t;
}

// The whole text's audio so far as a WAV file (16-bit PCM, 24 kHz, mono).
function downloadWav() {
  const cur = SP.current;
  if (!cur || !cur.samples) return;
  const all = new Float32Array(cur.samples);
  let at = 0;
  for (const p of cur.pcm) if (p) { all.set(p, at); at += p.length; }
  const blob = new Blob([wavBytes(all.subarray(0, at), RATE)], { type: 'audio/wav' });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  const words = cur.text.trim().split(/\s+/).slice(0, 6).join(' ').replace(/[^\p{L}\p{N} ]/gu, '').trim().replace(/ +/g, '-');
  a.download = `${words || 'speech'}.wav`.toLowerCase();
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  note('download', { run: cur.run, samples: at });
}

// -- the Read aloud button of replies ----------------------------------------------------------------------

function markButton(cur, on) {
  const m = cur && cur.origin;
  if (!m) return;
  for (const b of document.querySelectorAll('#messages .read-aloud')) {
    if (b._message === m) buttonLabel(b, on);
  }
}

function decorate(div, m) {
  if (m.role !== 'assistant' || !m.content || !m.content.trim()) return;
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'read-aloud';
  b._message = m;
  const reading = SP.current && SP.current.origin === m && !SP.current.stopped && !SP.current.finished;
  buttonLabel(b, !!reading);
  b.onclick = () => {
    const cur = SP.current;
    if (cur && cur.origin === m && !cur.stopped && !cur.finished) stopSpeech();
    else speak(m.content, m);
  };
  div.append(b);
}

function replied(m, st) {
  if (!$('speak-replies').checked || !m.content.trim() || (st && st.finish_reason === 'stopped')) return;
  speak(m.content, m);
}

// -- errors ---------------------------------------------------------------------------------------------------

function showSpeechError(err) {
  SP.lastError = { kind: err.kind, message: err.message, detail: err.detail };
  $('speech-error').hidden = false;
  $('speech-error').dataset.kind = err.kind || 'internal';
  $('speech-error-message').textContent = err.message || String(err);
  $('speech-error-detail').textContent = err.detail || '';
}

function clearSpeechError() {
  SP.lastError = null;
  $('speech-error').hidden = true;
  $('speech-error').dataset.kind = '';
}

// -- set-up ---------------------------------------------------------------------------------------------------

async function addVoiceFile(f) {
  clearSpeechError();
  try {
    await ensureSpeech();
    const bytes = await f.arrayBuffer();
    const name = f.name.replace(/\.[^.]+$/, '') || 'voice';
    const r = await call('speech-add-voice', { name, bytes }, [bytes]);
    fillVoices(r.voices, r.unreadable);
    $('voice').value = name;
    settings.voice = name;
    note('voice-added', { name });
  } catch (e) {
    showSpeechError(e);
  } finally {
    $('voice-file').value = '';
  }
}

async function useKokoroFile(f) {
  clearSpeechError();
  stopSpeech();
  const before = kokoroFile;
  kokoroFile = f;
  const loaded = SP.loaded;
  SP.loaded = null; // load this file now (the one loaded so far stays in Python until it is ready)
  try {
    await ensureSpeech();
  } catch (e) {
    kokoroFile = before;
    SP.loaded = loaded;
    showSpeechError(e);
  } finally {
    $('kokoro-file').value = '';
  }
}

export function setupSpeech() {
  messageHooks.decorate.push(decorate);
  messageHooks.replied.push(replied);
  $('voice').onchange = () => { settings.voice = $('voice').value; persistSettings(); };
  const showSpeed = () => { $('speech-speed-value').textContent = `${parseFloat($('speech-speed').value).toFixed(2)}×`; };
  $('speech-speed').oninput = showSpeed;
  $('speech-speed').onchange = () => { settings.speech_speed = $('speech-speed').value; persistSettings(); };
  $('speak-replies').onchange = () => {
    settings.speak_replies = $('speak-replies').checked;
    persistSettings();
    if ($('speak-replies').checked) audioContext(); // allowed to play from now on (a click made it)
  };
  $('speech-keep-copy').onchange = () => { settings.speech_keep_copy = $('speech-keep-copy').checked; persistSettings(); };
  $('speech-say').onclick = () => speak($('speech-text').value, null);
  $('speech-stop').onclick = stopSpeech;
  $('speech-download').onclick = downloadWav;
  $('voice-file').onchange = () => { const f = $('voice-file').files[0]; if (f) addVoiceFile(f); };
  $('kokoro-file').onchange = () => { const f = $('kokoro-file').files[0]; if (f) useKokoroFile(f); };
  $('speech-copy-delete').onclick = async () => {
    if (SP.copy) await call('cache-delete', { key: SP.copy.key });
    await browserCopy();
  };
  if (settings.speech_speed) $('speech-speed').value = settings.speech_speed;
  showSpeed();
  $('speak-replies').checked = !!settings.speak_replies;
  $('speech-keep-copy').checked = !!settings.speech_keep_copy;
  fillVoices([]);
}
