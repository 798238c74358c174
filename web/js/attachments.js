// Images in the chat: attached by dropping them on the page, pasting them, or the Attach button; shown as
// thumbnails in the composer (removable until sent) and in the sent message. An image is kept as a Blob of
// its bytes: in S.pending while in the composer, then in the message ({name, type, size, width, height,
// blob}), which IndexedDB stores with the conversation.
//
// The checks here are a convenience (is it an image, does the model read images, is it absurdly large);
// whether an image can be used is decided in Python (rullama_py.media): a damaged file, an SVG or an image
// too large comes back from there as a sentence, and the message goes back into the composer.

import { $, S, kb, mb } from './state.js';
import { notice } from './ui.js';
import { call } from './worker-client.js';

const MAX_BYTES = 64e6; // larger than any photo; Python checks the pixel count

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
  if (/^audio\/(wav|x-wav|wave|vnd\.wave)$/.test(file.type) || /\.wav$/i.test(file.name)) return 'audio';
  return null;
}

// Add files to the composer; refusals are said in the notice line. Returns the names attached.
export async function addFiles(files) {
  const added = [];
  for (const f of files) {
    const kind = kindOf(f);
    if (!kind) { notice(`${f.name}: only images and WAV audio can be attached.`); continue; }
    if (!S.model) { notice(`Load a model first: ${f.name} was not attached.`); continue; }
    if (kind === 'audio') {
      if (!S.model.has_audio) notice(`This model has no audio input, so ${f.name} was not attached.`);
      else notice(`This version of the app cannot send audio input to the model yet, so ${f.name} was not attached.`);
      continue;
    }
    if (!S.model.has_vision) {
      notice(`This model has no image input, so ${f.name} was not attached.`
        + ' Load a Gemma 4 model with vision, or add its vision projector (mmproj).');
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
  }
  if (added.length) {
    notice('');
    call('prepare-images').catch(() => {}); // load the image decoder while the user writes
  }
  renderPending();
  return added;
}

export function removePending(img) {
  S.pending = S.pending.filter(x => x !== img);
  renderPending();
}

// The composer's images, handed to a message (the composer is then empty).
export function takePending() {
  const out = S.pending;
  S.pending = [];
  renderPending();
  return out;
}

// Put a message's images back in the composer (its reply failed), before any attached since.
export function restorePending(images) {
  S.pending = [...images, ...S.pending.filter(x => !images.includes(x))];
  renderPending();
}

function describe(img) {
  const dims = img.width ? ` · ${img.width} × ${img.height}` : '';
  return `${img.name}${dims} · ${kb(img.size)}`;
}

function thumb(img, onRemove) {
  const fig = document.createElement('figure');
  fig.className = 'thumb';
  fig.title = describe(img);
  const im = document.createElement('img');
  im.src = blobUrl(img.blob);
  im.alt = img.name;
  im.onclick = () => view(img);
  fig.append(im);
  if (onRemove) {
    const x = document.createElement('button');
    x.type = 'button';
    x.className = 'remove';
    x.title = `Remove ${img.name}`;
    x.setAttribute('aria-label', `Remove ${img.name}`);
    x.textContent = '×';
    x.onclick = () => onRemove(img);
    fig.append(x);
  }
  const cap = document.createElement('figcaption');
  cap.textContent = img.name;
  fig.append(cap);
  return fig;
}

// A row of thumbnails (a sent message's images, or the composer's with remove buttons).
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

// The history as the worker takes it: each image's bytes as an ArrayBuffer of its own, to be transferred.
export async function withImageBytes(messages) {
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
