// The one message protocol between the page and web/worker.js.
//
// Requests: call(op, args, transfer) posts {id, op, ...args} and resolves with the worker's
// {reply: id, ok: true, value}, or rejects with an Error carrying {kind, message, detail} for
// {reply: id, ok: false, error}. The ops:
//
//   boot                                  start Pyodide and install rullama_py (the page calls it at start)
//   load {kind, url|file|key, mmproj?, options}
//                                         kind: 'url' | 'file' | 'opfs'; mmproj: the same shape (a projector,
//                                         vision and/or audio, for a llama.cpp model file), or absent
//   chat {messages, request}              messages: [{role, content: str, images?: [{name, type, bytes}],
//                                         audio?: [{name, format: 'wav' | 'f32', bytes}]}] where bytes is an
//                                         ArrayBuffer, transferred (never base64): an image file; a WAV file
//                                         (format 'wav', decoded and resampled by Python) or float32 mono
//                                         samples at 16 kHz (format 'f32': a compressed file decoded by the
//                                         page, or a recording). The whole history goes every turn, media
//                                         included; a message's images go first, then its clips, then its
//                                         text. request: sampling settings, max_tokens, image_tokens.
//                                         Resolves with the reply's stats (images_read, image_seconds,
//                                         audio_read (30 s blocks), audio_seconds when media were read) and text.
//   stop                                  end the running reply (or image or audio reading) now
//   prepare-images                        load the image decoder (Pillow) ahead of the first image
//   prepare-audio                         load the resampler (scipy) ahead of the first WAV file
//   new-chat | stats | save | restore {bytes}
//   download {url, name, chunk} | pause-download | cache-list | cache-delete {key}
//
// Events: {event, ...} to the function registered with on(event, fn):
//   boot {text, ready}                    Python start-up steps
//   progress {phase, ...}                 model load: opening, weights (bytes, tensors, seconds left), ready
//   download {done, size, resumedFrom, secondsLeft}
//   media {stage: 'decoder' | 'resampler' | 'image' | 'audio', index, count, layer, layers}
//                                         while a reply's media are read (before its first token): the image
//                                         decoder or the resampler loading, then image (or 30 s audio block)
//                                         index of count (1-based, per kind), layers done
//   token {id, text, n, context, max_context, ...}

import { S } from './state.js';
import { showError } from './ui.js';

const worker = new Worker(new URL('../worker.js', import.meta.url), { type: 'module' });
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

export function call(op, args = {}, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, op, ...args }, transfer);
  });
}

export const on = (event, fn) => listeners.set(event, fn);
