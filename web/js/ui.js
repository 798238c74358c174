// Messages to the user: the error box (always a plain sentence, technical detail folded away), the notice
// line under the chat, the load progress bar, and which buttons can be pressed right now.

import { $, S } from './state.js';

export function showError(err) {
  S.lastError = err;
  $('error').hidden = false;
  $('error').dataset.kind = err.kind || 'internal';
  $('error-message').textContent = err.message || String(err);
  $('error-detail').textContent = err.detail || '';
  $('loader').hidden = false;
}

// An error of a reply (the chat's own box, by the composer: the models panel stays as it is).
export function showChatError(err) {
  S.lastError = err;
  $('chat-error').hidden = false;
  $('chat-error').dataset.kind = err.kind || 'internal';
  $('chat-error-message').textContent = err.message || String(err);
  $('chat-error-detail').textContent = err.detail || '';
}

// The chat's error box only (its sentence was about a message the user has since changed).
export function clearChatError() {
  $('chat-error').hidden = true;
  $('chat-error').dataset.kind = '';
}

export function clearError() {
  for (const id of ['error', 'chat-error']) {
    $(id).hidden = true;
    $(id).dataset.kind = '';
  }
}

export function notice(text) {
  S.lastNotice = text || '';
  $('notice').textContent = text;
  $('notice').hidden = !text;
}

export function setProgress(fraction, text) {
  $('progress').hidden = false;
  const bar = $('progress-bar');
  if (fraction == null) bar.removeAttribute('value');
  else bar.value = Math.max(0, Math.min(1, fraction));
  $('progress-text').textContent = text;
}

export function updateButtons() {
  const ready = !!S.model && !S.busy;
  $('send').disabled = !ready;
  $('regenerate').disabled = !ready || !S.active || !S.active.messages.some(m => m.role === 'user');
  $('stop').disabled = !S.generating;
  $('load').disabled = S.busy;
  $('new-chat').disabled = S.generating;
}
