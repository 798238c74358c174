// Conversations in IndexedDB, and the sidebar that lists them.
//
// Database 'rullama' v1, two stores:
//   conversations {id, title, system, messages, updated}
//     messages: [{role, content, meta?, images?: [{name, type, size, width?, height?, blob}],
//     audio?: [{kind: 'audio', name, type, size, seconds, blob, pcm?}]}]; the attachments are kept as Blobs
//     (IndexedDB stores their bytes), so a reloaded page shows their thumbnails, plays their clips and sends
//     their bytes again with the history (a clip's pcm: the very samples sent before, see audio.js).
//   snapshots {id (= conversation id), identity, bytes, tokens, model, saved}
//     the engine state after the last reply, usable only by a model with the same identity (configuration,
//     weights fingerprint and context size). It records which images and clips are in its context, so a
//     conversation with media resumes without reading them again.

import { $, S } from './state.js';

export const DB = {
  db: null,
  open() {
    return new Promise((resolve, reject) => {
      const r = indexedDB.open('rullama', 1);
      r.onupgradeneeded = () => {
        r.result.createObjectStore('conversations', { keyPath: 'id' });
        r.result.createObjectStore('snapshots', { keyPath: 'id' });
      };
      r.onsuccess = () => resolve((this.db = r.result));
      r.onerror = () => reject(r.error);
    });
  },
  run(store, mode, fn) {
    return new Promise((resolve, reject) => {
      const t = this.db.transaction(store, mode);
      const req = fn(t.objectStore(store));
      t.oncomplete = () => resolve(req ? req.result : undefined);
      t.onerror = t.onabort = () => reject(t.error);
    });
  },
  get: (store, key) => DB.run(store, 'readonly', s => s.get(key)),
  put: (store, value) => DB.run(store, 'readwrite', s => s.put(value)),
  del: (store, key) => DB.run(store, 'readwrite', s => s.delete(key)),
  all: store => DB.run(store, 'readonly', s => s.getAll()),
};

// What the sidebar does when a conversation is picked (set by main.js: the chat panel shows it).
const handlers = { select: () => {} };
export function onSelect(fn) {
  handlers.select = fn;
}

export async function loadConversations() {
  S.convs = await DB.all('conversations');
  return S.convs;
}

export function newConversation() {
  const c = { id: crypto.randomUUID(), title: 'New chat', system: '', messages: [], updated: Date.now() };
  S.convs.unshift(c);
  return c;
}

export async function saveConversation(c) {
  c.updated = Date.now();
  await DB.put('conversations', c);
  renderConversations();
}

export const loadSnapshot = id => DB.get('snapshots', id);
export const saveSnapshotRecord = rec => DB.put('snapshots', rec);

async function deleteConversation(c) {
  S.convs = S.convs.filter(x => x !== c);
  await DB.del('conversations', c.id);
  await DB.del('snapshots', c.id);
  if (S.engineConv === c.id) S.engineConv = null;
  if (S.active === c) handlers.select(S.convs[0] || newConversation());
  else renderConversations();
}

export function renderConversations() {
  const ul = $('conversations');
  ul.textContent = '';
  for (const c of [...S.convs].sort((a, b) => b.updated - a.updated)) {
    const li = document.createElement('li');
    li.classList.toggle('active', c === S.active);
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'conv';
    b.textContent = c.title;
    const n = c.messages.reduce((k, m) => k + (m.images ? m.images.length : 0), 0);
    const a = c.messages.reduce((k, m) => k + (m.audio ? m.audio.length : 0), 0);
    if (n || a) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.textContent = [n && `${n} image${n > 1 ? 's' : ''}`, a && `${a} clip${a > 1 ? 's' : ''}`].filter(Boolean).join(', ');
      b.append(badge);
    }
    b.onclick = () => { if (!S.generating) handlers.select(c); };
    const del = document.createElement('button');
    del.type = 'button';
    del.className = 'del';
    del.title = 'Delete this conversation';
    del.textContent = '×';
    del.onclick = () => { if (!S.generating) deleteConversation(c); };
    li.append(b, del);
    ul.append(li);
  }
}
