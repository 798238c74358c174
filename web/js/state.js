// What every module of the page shares: the element lookup, the query parameters, the app state and a few
// formatting helpers. Nothing here touches the worker or the DOM beyond lookups.
//
// Query parameters (for testing and tuning): ?chunk=BYTES sets the OPFS download part size (default 8 MiB);
// ?max_buffer=BYTES makes the app pretend the GPU allows no larger buffer (to see the device-limit message).

export const $ = id => document.getElementById(id);
export const query = new URLSearchParams(location.search);

// Everything a test or a curious user may want to look at; nothing here is needed by the page itself.
export const S = (window.rullamaApp = {
  python: false,
  model: null, // the load result: name, identity, max_context, has_vision, has_audio, mmproj, ...
  busy: false, // loading or generating
  generating: false,
  convs: [],
  active: null, // the conversation shown
  engineConv: null, // the conversation whose context is in the engine right now
  lastReply: null, // {ids, text, stats, restored, images}
  lastLoad: null,
  lastError: null,
  lastNotice: '',
  serverModels: [],
  pending: [], // attachments in the composer, not sent yet: images {name, type, size, blob, width, height}
  //             and audio clips {kind: 'audio', name, type, size, seconds, blob, pcm?} (see audio.js)
  recording: null, // while recording: {seconds, level (0-1, the meter), rms, levels (the last 200 levels)}
  media: null, // the last media-reading progress event of the running reply (images, audio)
  mediaEvents: [], // the running reply's media events, each with the text the reply bubble showed
  events: 0,
});

export const mb = n => (n / 1e6).toFixed(1) + ' MB';
// A download's size: gigabytes past 1 GB (a full-size model is 1-20 GB).
export const size = n => (n >= 1e9 ? (n / 1e9).toFixed(2) + ' GB' : mb(n));
export const kb = n => (n < 1e6 ? Math.max(1, Math.round(n / 1e3)) + ' KB' : mb(n));
export const secs = s => (s == null || !isFinite(s) ? '' : s < 60 ? `about ${Math.ceil(s)} s left` : `about ${Math.ceil(s / 60)} min left`);

// Control characters (a random test model emits byte tokens 0x00-0x1f) shown as their Unicode pictures
// rather than as empty boxes; newlines and tabs stay.
export const visible = t => t.replace(/[\x00-\x08\x0b-\x1f]/g, ch => String.fromCharCode(0x2400 + ch.charCodeAt(0)));

// A model loaded with "Text only" whose file has the tower of `kind` ('image' or 'audio'): the sentence that
// says why a file of that kind (named `name`, if given) cannot be used; else null.
export function textOnlySentence(kind, name) {
  if (!S.model || !(S.model.towers_left_out || []).includes(kind)) return null;
  const [tower, what] = kind === 'image' ? ['vision tower', 'images'] : ['audio tower', 'audio'];
  return `${name ? name + ' was not attached: the' : 'The'} model was loaded text-only, without its ${tower}. `
    + `Untick "Text only" in the models panel and load it again to use ${what}.`;
}
