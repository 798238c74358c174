// The one message protocol between the page and web/worker.js.
//
// Requests: call(op, args, transfer) posts {id, op, ...args} and resolves with the worker's
// {reply: id, ok: true, value}, or rejects with an Error carrying {kind, message, detail} for
// {reply: id, ok: false, error}. The ops:
//
//   boot                                  start Pyodide and install rullama_py (the page calls it at start)
//   load {kind, url|file|key, mmproj?, options}
//                                         kind: 'url' | 'file' | 'opfs'; mmproj: the same shape (a vision
//                                         projector for a llama.cpp model file), or absent
//   chat {messages, request}              messages: [{role, content: str, images?: [{name, type, bytes}]}]
//                                         where bytes is an ArrayBuffer, transferred (never base64); the whole
//                                         history goes every turn, images included; request: sampling settings,
//                                         max_tokens, image_tokens. Resolves with the reply's stats and text.
//   stop                                  end the running reply (or image reading) now
//   prepare-images                        load the image decoder (Pillow) ahead of the first image
//   new-chat | stats | save | restore {bytes}
//   download {url, name, chunk} | pause-download | cache-list | cache-delete {key}
//
// Events: {event, ...} to the function registered with on(event, fn):
//   boot {text, ready}                    Python start-up steps
//   progress {phase, ...}                 model load: opening, weights (bytes, tensors, seconds left), ready
//   download {done, size, resumedFrom, secondsLeft}
//   media {stage: 'decoder' | 'image', index, count, layer, layers}
//                                         while a reply's images are read (before its first token): the image
//                                         decoder loading, then image index of count (1-based), layers done
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
