// The chat panel: the messages of the active conversation, sending, streaming the reply (and, before it,
// the progress of reading the message's images and audio), stop, regenerate, and the engine state kept per
// conversation (a KV snapshot in IndexedDB after every reply).

import { $, S, visible } from './state.js';
import { clearError, notice, showChatError, updateButtons } from './ui.js';
import { call, on } from './worker-client.js';
import { samplingRequest } from './settings.js';
import { loadSnapshot, newConversation, renderConversations, saveConversation, saveSnapshotRecord } from './conversations.js';
import { isAudio, restorePending, takePending, thumbStrip, withMediaBytes } from './attachments.js';
import { isRecording, stopRecording } from './audio.js';

// Errors about a message's images or audio (see rullama_py.webapp.describe_error): the message goes back
// into the composer, text and attachments, so that the user can take one out or send it to another model.
// A diffusion model asked to chat (diffusion-model) is refused before anything runs too: the message goes back.
const MEDIA_ERRORS = new Set(['image', 'no-vision', 'image-decoder', 'vision-load', 'vision-limit',
  'audio', 'no-audio', 'resampler', 'audio-load', 'audio-limit', 'diffusion-model']);

const attachmentsOf = m => [...(m.images || []), ...(m.audio || [])];

// Hooks for other panels (speech.js: the Read aloud button, Speak replies): decorate(div, m) runs on every
// message element rendered; replied(m, stats) after a reply is shown and saved.
export const messageHooks = { decorate: [], replied: [] };

// Other ways of writing a reply, by generation mode (diffusion.js: 'diffusion'); S.mode picks one, and a mode
// without an entry here ('chat') streams tokens below.
export const replyModes = {};

export function messageElement(m) {
  const div = document.createElement('div');
  div.className = 'msg ' + m.role;
  const who = document.createElement('div');
  who.className = 'who';
  who.textContent = m.role === 'user' ? 'You' : 'Model';
  div.append(who);
  const att = attachmentsOf(m);
  if (att.length) div.append(thumbStrip(att));
  const body = document.createElement('div');
  body.className = 'body';
  body.textContent = visible(m.content);
  div.append(body);
  if (m.meta) {
    const meta = document.createElement('div');
    meta.className = 'meta';
    meta.textContent = m.meta;
    div.append(meta);
  }
  for (const fn of messageHooks.decorate) fn(div, m);
  return div;
}

export function renderMessages() {
  const box = $('messages');
  box.textContent = '';
  const c = S.active;
  if (!c.messages.length) {
    const p = document.createElement('p');
    p.className = 'empty';
    p.textContent = S.model ? 'Write a message to start.' : 'Load a model, then write a message.';
    box.append(p);
  }
  for (const m of c.messages) box.append(messageElement(m));
  box.scrollTop = box.scrollHeight;
  updateButtons();
}

export function setActive(c) {
  S.active = c;
  localStorage.setItem('rullama.active', c.id);
  $('system').value = c.system || '';
  renderConversations();
  renderMessages();
  notice('');
}

export const startNewChat = () => setActive(newConversation());

function metaLine(st) {
  const why = { stop: 'finished', length: 'max tokens reached', context: 'context full', stopped: 'stopped' }[st.finish_reason] || st.finish_reason;
  return `${st.generated_tokens} tokens · ${st.generate_tps.toFixed(1)} tokens/s · ${why}`;
}

function statusLine(st, restored) {
  const parts = [
    `${st.generate_tps.toFixed(1)} tokens/s`,
    `prompt ${st.prompt_tokens} tokens` + (st.prompt_tps ? ` at ${st.prompt_tps.toFixed(1)} tokens/s` : ''),
    `context ${st.context} / ${st.max_context}`,
  ];
  if (st.images_read) parts.push(`${st.images_read} image${st.images_read > 1 ? 's' : ''} read in ${st.image_seconds.toFixed(1)} s`);
  if (st.audio_read) parts.push(`audio heard in ${st.audio_seconds.toFixed(1)} s`);
  // The CPU's share of a decode step (Python encoding and submitting the GPU work): the rest is GPU time.
  if (st.host && st.host.steps) parts.push(`host ${st.host.host_ms.toFixed(2)} of ${st.host.wall_ms.toFixed(1)} ms per token`);
  if (restored) parts.push(`resumed from the saved state (${restored} tokens not re-read)`);
  return parts.join(' · ');
}

// What the reply bubble says while the message's images and audio are read, before the first token.
// Python reports the layers done (0 to layers) of image or audio block `index` of `count` (1-based; audio is
// read in blocks of 30 s); the bubble says which layer is running, then that the text is read once the
// last one is done.
export function mediaText(e) {
  if (e.stage === 'decoder') return 'Loading the image decoder…';
  if (e.stage === 'resampler') return 'Loading the audio resampler…';
  if (e.stage === 'image' || e.stage === 'audio') {
    const image = e.stage === 'image';
    if (e.layer >= e.layers && e.index >= e.count) {
      const what = image ? (e.count === 1 ? 'the image' : `${e.count} images`) : 'the audio';
      return `${image ? 'Read' : 'Listened to'} ${what}; reading the message…`;
    }
    return `${image ? 'Reading image' : 'Listening to audio'} ${e.index} of ${e.count}: layer ${Math.min(e.layer + 1, e.layers)} of ${e.layers}`;
  }
  return 'Reading the attachments…';
}

// Put the engine on conversation `c`: restore its snapshot when it was made by this very model, otherwise
// start empty (the chat call then reads the whole conversation as its prompt, images included).
async function ensureContext(c) {
  if (S.engineConv === c.id) return 0;
  S.engineConv = null;
  const snap = await loadSnapshot(c.id);
  if (snap && snap.identity === S.model.identity) {
    try {
      const r = await call('restore', { bytes: snap.bytes });
      S.engineConv = c.id;
      return r.context;
    } catch (e) {
      console.warn('snapshot not restored:', e.message);
    }
  }
  await call('new-chat');
  S.engineConv = c.id;
  return 0;
}

async function reply() {
  if (replyModes[S.mode]) return replyModes[S.mode]();
  const c = S.active;
  c.system = $('system').value;
  const history = (c.system.trim() ? [{ role: 'system', content: c.system }] : []).concat(c.messages);
  S.busy = S.generating = true;
  updateButtons();
  clearError();
  notice('');
  $('status').textContent = '';
  const m = { role: 'assistant', content: '' };
  const el = messageElement(m);
  el.classList.add('streaming');
  const activity = document.createElement('div');
  activity.className = 'activity';
  el.insertBefore(activity, el.querySelector('.body'));
  const last = c.messages[c.messages.length - 1];
  if (last && last.audio && last.audio.length) activity.textContent = 'Listening to the audio…';
  else if (last && last.images && last.images.length) activity.textContent = 'Reading the images…';
  activity.hidden = !activity.textContent;
  const box = $('messages');
  box.append(el);
  box.scrollTop = box.scrollHeight;
  const body = el.querySelector('.body');
  const ids = [];
  let restored = 0;
  S.streaming = { n: 0 };
  S.media = null;
  S.mediaEvents = [];
  on('media', e => {
    S.media = e;
    if (S.streaming && S.streaming.n) return;
    activity.textContent = mediaText(e);
    activity.hidden = false;
    S.mediaEvents.push({ ...e, text: activity.textContent });
  });
  on('token', e => {
    if (e.id >= 0) ids.push(e.id);
    S.streaming.n = e.n;
    activity.hidden = true;
    m.content += e.text;
    body.textContent = visible(m.content);
    box.scrollTop = box.scrollHeight;
    $('status').textContent = `generating · ${e.n} tokens · ${e.generate_tps.toFixed(1)} tokens/s · context ${e.context} / ${e.max_context}`;
  });
  try {
    restored = await ensureContext(c);
    const { messages, transfer } = await withMediaBytes(history);
    const st = await call('chat', { messages, request: samplingRequest() }, transfer);
    el.classList.remove('streaming');
    S.lastReply = { ids, text: st.text, stats: st, restored };
    if (st.finish_reason === 'stopped' && !st.generated_tokens && !st.text) {
      // Stopped while the media were read: no reply, the user's message (and its attachments) stays.
      el.remove();
      S.lastReply.cancelled = true;
      $('status').textContent = 'Stopped before the reply began. Your message is kept: Regenerate reads it again.';
      return;
    }
    m.content = st.text;
    m.meta = metaLine(st);
    el.replaceWith(messageElement(m));
    c.messages.push(m);
    $('status').textContent = statusLine(st, restored);
    await saveConversation(c);
    await saveSnapshot(c, st);
    for (const fn of messageHooks.replied) fn(m, st);
  } catch (e) {
    el.remove();
    S.lastReply = { ids, text: m.content, error: e, restored };
    if (MEDIA_ERRORS.has(e.kind)) {
      // Nothing changed in the engine's context (media are read before it moves): keep engineConv.
      if (last && last.role === 'user' && c.messages[c.messages.length - 1] === last) {
        c.messages.pop();
        backToComposer(last);
        renderMessages();
        await saveConversation(c);
      }
      S.lastReply.restoredToComposer = true;
    } else {
      S.engineConv = null; // unknown state: the next reply re-reads the conversation
    }
    showChatError(e);
  } finally {
    S.busy = S.generating = false;
    S.streaming = null;
    updateButtons();
  }
}

// A message whose reply failed goes back to the composer: its text before anything typed since.
export function backToComposer(msg) {
  const now = $('prompt').value;
  $('prompt').value = msg.content + (now && msg.content ? '\n' : '') + (now || '');
  restorePending(attachmentsOf(msg));
}

async function saveSnapshot(c, st) {
  try {
    const snap = await call('save');
    if (!snap) return;
    await saveSnapshotRecord({ id: c.id, identity: snap.identity, bytes: snap.bytes, tokens: st.context, model: S.model.name, saved: Date.now() });
    S.lastSnapshot = { id: c.id, bytes: snap.bytes.length, tokens: st.context };
  } catch (e) {
    console.warn('snapshot not saved:', e.message); // the conversation is saved; it will be re-read later
  }
}

export async function send(ev) {
  ev && ev.preventDefault();
  if (isRecording() && !S.busy) await stopRecording(); // Send while recording: the recording goes with it
  const text = $('prompt').value;
  if ((!text.trim() && !S.pending.length) || S.busy) return;
  if (!S.model) return notice('Load a model first.');
  const c = S.active;
  const msg = { role: 'user', content: text };
  const att = takePending();
  if (att.some(a => !isAudio(a))) msg.images = att.filter(a => !isAudio(a));
  if (att.some(isAudio)) msg.audio = att.filter(isAudio);
  c.messages.push(msg);
  if (c.title === 'New chat') c.title = text.trim().slice(0, 40) || att[0].name;
  $('prompt').value = '';
  renderMessages();
  await saveConversation(c);
  await reply();
}

export async function regenerate() {
  if (S.busy || !S.model) return;
  const c = S.active;
  while (c.messages.length && c.messages[c.messages.length - 1].role === 'assistant') c.messages.pop();
  if (!c.messages.length) return;
  renderMessages();
  await saveConversation(c);
  await reply();
}

export const stop = () => call('stop');
