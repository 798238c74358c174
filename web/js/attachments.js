// Attachments in the chat, images and audio: attached by dropping files on the page, pasting them, the
// Attach button, or (audio) the Record button (audio.js); shown in the composer (removable until sent) and
// in the sent message: a thumbnail for an image, the name, duration and a play button for a clip. An
// attachment is kept as a Blob of its bytes: in S.pending while in the composer, then in the message
// (m.images: [{name, type, size, width, height, blob}], m.audio: [{kind: 'audio', name, type, size, seconds,
// blob, pcm?}], see audio.js), which IndexedDB stores with the conversation. A message's images go to the
// model first, then its clips, then its text.
//
// The checks here are a convenience (is it an image or audio, does the model read it, is it absurdly large);
// whether an attachment can be used is decided in Python (rullama_py.media): a damaged file, an SVG, an
// image too large or a WAV file it cannot read comes back from there as a sentence, and the message goes
// back into the composer.

import { $, S, kb, mb, textOnlySentence } from './state.js';
import { clearChatError, notice } from './ui.js';
import { call } from './worker-client.js';
import { audioFromFile, fmtDuration } from './audio.js';

const MAX_BYTES = 64e6; // larger than any photo; Python checks the pixel count
const MAX_AUDIO_BYTES = 512e6; // ten minutes of 48 kHz 6-channel 24-bit WAV; Python checks the length
const AUDIO_EXT = /\.(wav|mp3|ogg|oga|opus|m4a|mp4|aac|flac|webm|weba)$/i;
export const isAudio = a => a.kind === 'audio';

// One object URL per Blob for as long as the Blob lives (thumbnails are re-rendered often).
const urls = new WeakMap();
export function blobUrl(blob) {
  let u = urls.get(blob);
  if (!u) {
    u = URL.createObjectURL(blob);
    urls.set(blob, u);
  }
  return u;
}

function kindOf(file) {
  if (/^image\//.test(file.type) || (!file.type && /\.(png|jpe?g|gif|webp|bmp|svg)$/i.test(file.name))) return 'image';
  if (/^audio\//.test(file.type) || AUDIO_EXT.test(file.name)) return 'audio';
  return null;
}

// Attach one audio file, or say why not (returns the attachment or null).
async function addAudio(f) {
  const textOnly = textOnlySentence('audio', f.name);
  if (textOnly) { notice(textOnly); return null; }
  if (!S.model.has_audio) {
    notice(`This model has no audio input, so ${f.name} was not attached.`
      + ' Load a Gemma 4 model that hears audio, or add its projector (mmproj).');
    return null;
  }
  if (f.size > MAX_AUDIO_BYTES) { notice(`${f.name} is too large to attach (${mb(f.size)}).`); return null; }
  let bytes;
  try {
    bytes = await f.arrayBuffer();
  } catch (e) {
    notice(`${f.name} could not be read from the disk, so it was not attached.`);
    return null;
  }
  try {
    return await audioFromFile(f.name || 'audio', f.type, bytes);
  } catch (e) {
    notice(e.sentence || `${f.name} could not be attached.`);
    return null;
  }
}

// A clip made in the page (a recording): into the composer.
export function addClip(clip) {
  S.pending.push(clip);
  renderPending();
}

// Add files to the composer; refusals are said in the notice line. Returns the names attached.
export async function addFiles(files) {
  const added = [];
  let wav = false, image = false;
  for (const f of files) {
    const kind = kindOf(f);
    if (!kind) { notice(`${f.name}: only images and audio can be attached.`); continue; }
    if (!S.model) { notice(`Load a model first: ${f.name} was not attached.`); continue; }
    if (kind === 'audio') {
      const clip = await addAudio(f);
      if (clip) {
        S.pending.push(clip);
        added.push(clip.name);
        wav = wav || !clip.pcm;
      }
      continue;
    }
    const textOnly = textOnlySentence('image', f.name);
    if (textOnly) { notice(textOnly); continue; }
    if (!S.model.has_vision) {
      notice(`This model has no image input, so ${f.name} was not attached.`
        + ' Load a Gemma 4 model with vision, or add its projector (mmproj).');
      continue;
    }
    if (f.size > MAX_BYTES) { notice(`${f.name} is too large to attach (${mb(f.size)}).`); continue; }
    let bytes;
    try {
      bytes = await f.arrayBuffer();
    } catch (e) {
      notice(`${f.name} could not be read from the disk, so it was not attached.`);
      continue;
    }
    const img = { name: f.name || 'image', type: f.type || 'application/octet-stream', size: bytes.byteLength, blob: new Blob([bytes], { type: f.type }) };
    try { // for the tooltip only: a file the browser cannot show may still be one Python reads, or explains
      const bmp = await createImageBitmap(img.blob);
      img.width = bmp.width;
      img.height = bmp.height;
      bmp.close();
    } catch { /* shown as a broken thumbnail; Python says what is wrong with it when it is sent */ }
    S.pending.push(img);
    added.push(img.name);
    image = true;
  }
  if (added.length) notice('');
  // Load what Python needs while the user writes: the image decoder (Pillow), the resampler (scipy) for WAV.
  if (image) call('prepare-images').catch(() => {});
  if (wav) call('prepare-audio').catch(() => {});
  renderPending();
  return added;
}

export function removePending(img) {
  S.pending = S.pending.filter(x => x !== img);
  clearChatError(); // a refusal of the message's attachments no longer applies to what is left
  renderPending();
}

// The composer's attachments, handed to a message (the composer is then empty).
export function takePending() {
  const out = S.pending;
  S.pending = [];
  renderPending();
  return out;
}

// Put a message's attachments back in the composer (its reply failed), before any attached since.
export function restorePending(items) {
  S.pending = [...items, ...S.pending.filter(x => !items.includes(x))];
  renderPending();
}

function describe(img) {
  if (isAudio(img)) return `${img.name} · ${fmtDuration(img.seconds)} · ${kb(img.size)}`;
  const dims = img.width ? ` · ${img.width} × ${img.height}` : '';
  return `${img.name}${dims} · ${kb(img.size)}`;
}

function removeButton(item, onRemove) {
  const x = document.createElement('button');
  x.type = 'button';
  x.className = 'remove';
  x.title = `Remove ${item.name}`;
  x.setAttribute('aria-label', `Remove ${item.name}`);
  x.textContent = '×';
  x.onclick = () => onRemove(item);
  return x;
}

// An audio clip: a play button over an <audio> element (its blob's object URL), the name and the duration.
function clipElement(clip, onRemove) {
  const fig = document.createElement('figure');
  fig.className = 'clip';
  fig.title = describe(clip);
  const audio = document.createElement('audio');
  audio.preload = 'metadata';
  audio.src = blobUrl(clip.blob);
  const play = document.createElement('button');
  play.type = 'button';
  play.className = 'play';
  const label = () => {
    play.textContent = audio.paused ? '▶' : '❚❚';
    play.setAttribute('aria-label', `${audio.paused ? 'Play' : 'Pause'} ${clip.name}`);
  };
  play.onclick = () => { if (audio.paused) audio.play().catch(() => {}); else audio.pause(); };
  audio.onplay = audio.onpause = audio.onended = label;
  label();
  const info = document.createElement('figcaption');
  const name = document.createElement('span');
  name.className = 'name';
  name.textContent = clip.name;
  const dur = document.createElement('span');
  dur.className = 'duration';
  dur.textContent = fmtDuration(clip.seconds);
  if (clip.seconds == null) { // a WAV header the page could not read: ask the browser (Python has the last word)
    audio.onloadedmetadata = () => { if (isFinite(audio.duration)) dur.textContent = fmtDuration(audio.duration); };
  }
  info.append(name, dur);
  fig.append(play, info, audio);
  if (onRemove) fig.append(removeButton(clip, onRemove));
  return fig;
}

function thumb(img, onRemove) {
  if (isAudio(img)) return clipElement(img, onRemove);
  const fig = document.createElement('figure');
  fig.className = 'thumb';
  fig.title = describe(img);
  const im = document.createElement('img');
  im.src = blobUrl(img.blob);
  im.alt = img.name;
  im.onclick = () => view(img);
  fig.append(im);
  if (onRemove) fig.append(removeButton(img, onRemove));
  const cap = document.createElement('figcaption');
  cap.textContent = img.name;
  fig.append(cap);
  return fig;
}

// A row of thumbnails and clips (a sent message's attachments, or the composer's with remove buttons).
export function thumbStrip(images, onRemove) {
  const div = document.createElement('div');
  div.className = 'thumbs';
  for (const img of images) div.append(thumb(img, onRemove));
  return div;
}

function renderPending() {
  const box = $('attachments');
  box.textContent = '';
  box.hidden = !S.pending.length;
  if (S.pending.length) box.append(thumbStrip(S.pending, removePending));
}

function view(img) {
  const d = $('viewer');
  $('viewer-img').src = blobUrl(img.blob);
  $('viewer-img').alt = img.name;
  $('viewer-caption').textContent = describe(img);
  d.showModal();
}

// The history as the worker takes it: each attachment's bytes as an ArrayBuffer of its own, to be
// transferred: an image's file, a WAV file's bytes (format 'wav'), or float32 16 kHz samples (format 'f32').
export async function withMediaBytes(messages) {
  const transfer = [];
  const out = [];
  for (const m of messages) {
    const msg = { role: m.role, content: m.content };
    if (m.images && m.images.length) {
      msg.images = [];
      for (const img of m.images) {
        const bytes = await img.blob.arrayBuffer();
        transfer.push(bytes);
        msg.images.push({ name: img.name, type: img.type, bytes });
      }
    }
    if (m.audio && m.audio.length) {
      msg.audio = [];
      for (const clip of m.audio) {
        const bytes = await (clip.pcm || clip.blob).arrayBuffer();
        transfer.push(bytes);
        msg.audio.push({ name: clip.name, format: clip.pcm ? 'f32' : 'wav', bytes });
      }
    }
    out.push(msg);
  }
  return { messages: out, transfer };
}

function onPaste(ev) {
  const files = [...(ev.clipboardData ? ev.clipboardData.files : [])].filter(f => kindOf(f));
  if (!files.length) return; // text: the textarea takes it as usual
  ev.preventDefault();
  addFiles(files);
}

export function setupAttachments() {
  $('attach').onclick = () => $('attach-file').click();
  $('attach-file').onchange = async () => {
    const files = [...$('attach-file').files];
    $('attach-file').value = '';
    await addFiles(files);
  };
  document.addEventListener('paste', onPaste);
  $('viewer').onclick = () => $('viewer').close();
}
