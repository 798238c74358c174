// The one message protocol between the page and web/worker.js.
//
// Requests: call(op, args, transfer) posts {id, op, ...args} and resolves with the worker's
// {reply: id, ok: true, value}, or rejects with an Error carrying {kind, message, detail} for
// {reply: id, ok: false, error}. The ops:
//
//   boot                                  start Pyodide and install rullama_py (the page calls it at start)
//   load {kind, url|file|key, mmproj?, options}
//                                         options: {max_context, prefill_chunk, name, mmproj_name, text_only
//                                         (leave the towers out), release_towers (free them after each reply),
//                                         ple_on_gpu (Gemma 4's per-layer-embedding table on the GPU),
//                                         kv_cache_type ('f16' or 'q8_0': the KV cache's format)}
//                                         kind: 'url' | 'file' | 'opfs'; mmproj: the same shape (a projector,
//                                         vision and/or audio, for a llama.cpp model file), or absent.
//                                         Resolves with the model's info; its `diffusion` is null for a chat
//                                         model, {canvas_length, steps, t_min, t_max, entropy_bound} (the
//                                         sampler's defaults) for a diffusion model (DiffusionGemma)
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
//   diffuse {messages, request}           a diffusion model's reply (DiffusionGemma: a canvas of tokens at a
//                                         time, sharpened step by step): messages as for chat (text only: a
//                                         conversation with media is refused, kind 'diffusion-media');
//                                         request: {steps, seed, max_tokens, t_min?, t_max?, entropy_bound?}
//                                         (absent: the model's defaults). One diffusion event per step; resolves
//                                         with {text, ids, tokens, forwards, tokens_per_forward, steps, canvases,
//                                         seconds, finish_reason: 'stop' | 'length' | 'context' | 'stopped'}.
//                                         chat with a diffusion model rejects with kind 'diffusion-model',
//                                         diffuse with a chat model with kind 'not-diffusion'
//   stop                                  end the running reply (or image or audio reading, or diffusion after
//                                         the step running) now
//   prepare-images                        load the image decoder (Pillow) ahead of the first image
//   prepare-audio                         load the resampler (scipy) ahead of the first WAV file
//   new-chat | stats | save | restore {bytes}
//   memory                                the GPU memory the app's buffers hold: {allocated_bytes, peak_bytes
//                                         (since the last load), buffers, towers (the towers loaded now)}; the
//                                         same comes as a memory event after a load, a reply or speech loading
//   release-towers                        free the chat model's towers now (they load again with the next image
//                                         or clip); resolves with memory's answer
//   download {url, name, chunk, role?} | pause-download | cache-list {role?} | cache-delete {key}
//                                         role 'kokoro': the speech model's copy (its progress comes as
//                                         speech-download; cache-list {role: 'kokoro'} lists only those copies,
//                                         cache-list without a role only the chat models and projectors)
//
// Speech (Kokoro-82M text to speech; the model loads beside the chat model, on the same GPU device):
//   speech-load {kind, url|file|key, options: {name}}
//                                         kind as for load. Resolves with {name, size, fetched, voices,
//                                         sample_rate (24000), same_device, load_seconds}; a speech model loaded
//                                         before stays until the new one is ready (a damaged file changes nothing)
//   voices {kind?, url|file|key?}         the loaded speech model's voices ({loaded: true, voices}), or those a
//                                         Kokoro file lists in its header ({loaded: false, voices}: read by
//                                         ranges, no weights loaded) for the picker before the first use
//   speech-add-voice {name, bytes}        a voicepack file (kokoro-js's voices/*.bin: float32 [510, 256],
//                                         522,240 bytes) as voice `name`; resolves with the voices
//   speak {run, text, voice, speed, seed} read `text` aloud: one speech event per sentence, in order, the first
//                                         as soon as it is synthesised. run: a number the page picks, carried by
//                                         the events (a newer speak replaces this one: its events stop). Resolves
//                                         at the end with {done, run, sentences, samples, seconds, synth_seconds,
//                                         stopped}; rejects with kind 'speech' (empty text, nothing speakable,
//                                         unknown voice, speed out of range) or 'speech' mid-way (what was
//                                         spoken so far stays valid)
//   speech-stop                           end the speak request now: the sentence being synthesised finishes
//                                         (its event still comes: the page drops events of a stopped run), no
//                                         further sentence starts
//
// Voice cloning (rullama_py.voice.VoiceTrainer on the loaded speech model; one trainer at a time):
//   clone-target {bytes, rate, name, format}
//                                         the recording: float32 mono samples at `rate` (format 'f32') or a WAV
//                                         file (format 'wav', rate 0), transferred. Resolves with {name, seconds,
//                                         voice_seconds, trimmed: [start, end] s, input_seconds, input_rate,
//                                         truncated, warnings, envelope: [[min, max], ...]} after a clone-target
//                                         event; a recording too short, silent, clipped or damaged rejects with
//                                         kind 'clone' (the target before stays)
//   clone-start {options: {texts, train: 'timbre' | 'all', population, start: 'auto' | voice, seed}}
//                                         a new trainer (the speech model must be loaded): {start_voice,
//                                         start_loss, distances, warnings, settings, step: 0, curve: [start_loss]}
//   clone-train {run, until}              train until `until` steps in all or clone-pause: clone-progress events;
//                                         resolves with {step, best, step_size, paused, done}
//   clone-pause | clone-reset | clone-release
//                                         pause the loop; back to the start voice ({curve, step: 0}); free it
//   clone-voice                           the best voice so far: {bytes} (float32 [510, 256] voicepack)
//   clone-preview {text}                  the best voice speaking `text`: a clone-audio event; {samples, seconds}
// Sharing the GPU: speech-load and each sentence of a speak request are model work, queued with load and
// chat one request at a time. A message sent while a text is read aloud waits for the sentence being
// synthesised (a few seconds at most on a real GPU), then its reply streams; the rest of the text is
// synthesised after the reply, while the sentences already made keep playing.
//
// Events: {event, ...} to the function registered with on(event, fn):
//   boot {text, ready}                    Python start-up steps
//   progress {phase, ...}                 model load: opening, weights (bytes, tensors, seconds left), ready
//   download {done, size, resumedFrom, secondsLeft}
//   memory {allocated_bytes, peak_bytes, buffers, towers}
//                                         the GPU memory the app's buffers hold, after a load, a reply, the
//                                         speech model's load or release-towers
//   media {stage: 'decoder' | 'resampler' | 'image' | 'audio', index, count, layer, layers}
//                                         while a reply's media are read (before its first token): the image
//                                         decoder or the resampler loading, then image (or 30 s audio block)
//                                         index of count (1-based, per kind), layers done
//   token {id, text, n, context, max_context, ...}
//   diffusion {block, step, steps, temperature, mean_entropy, n_accepted, canvas_length, stable, converged,
//              block_done, done, seconds, ids, pieces, accepted, settled, end, text?}
//                                         one denoising step: the argmax canvas (ids, and pieces: each token as
//                                         text), accepted / settled (0/1 per position: the step kept its draw /
//                                         the argmax is the previous step's), end (first end-of-sequence position
//                                         or null); text (when a canvas ends) is every finished canvas's text
//   speech-progress {phase: 'kokoro-open' | 'kokoro-weights' | 'kokoro-ready', fetched, file_size, done,
//                    total, tensors, seconds_left, text}
//                                         the speech model loading (phases named apart from load's progress)
//   speech-download {done, size, resumedFrom, secondsLeft}
//                                         the speech model's copy downloading into the browser (OPFS)
//   speech {run, index, text, phonemes, durations, samples, sample_rate, seconds, synth_seconds, pcm}
//                                         one sentence read aloud: pcm is an ArrayBuffer (transferred, never
//                                         base64) of `samples` little-endian float32 mono samples at sample_rate
//   clone-target {name, samples, sample_rate, pcm}
//                                         the prepared target (trimmed, 24 kHz, levelled): what "Play target" plays
//   clone-audio {step, samples, sample_rate, pcm}
//                                         clone-preview's audio
//   clone-progress {run, steps: [{step, loss, best, accepted, step_size, seconds}], step, best, start_loss,
//                   step_size, steps_per_second} | {run, waiting: 'speech' | null}
//                                         one per clone_step call (a few steps, ~0.15 s of work); waiting while
//                                         a text is read aloud

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

// One listener per event: a module that registers again replaces its own earlier listener.
export const on = (event, fn) => listeners.set(event, fn);
