// The page's entry point: wires the panels together and starts the worker. Each concern has its module:
//   state.js          shared state (window.rullamaApp), element lookup, formatting
//   worker-client.js  the message protocol with worker.js (which runs Python in Pyodide)
//   ui.js             error box, notices, progress bar, button states
//   settings.js       sampling and load settings in localStorage
//   conversations.js  IndexedDB (conversations with their images, KV snapshots) and the sidebar
//   models.js         the models panel (server, URL, file, browser cache; projector (mmproj))
//   chat.js           messages, sending, streaming, stop, regenerate, snapshots
//   diffusion.js      the diffusion mode (DiffusionGemma): the canvas sharpening in the reply, its settings
//   attachments.js    images and audio: drop, paste, pick, thumbnails and clips, bytes for the worker
//   audio.js          audio: decoding in the page, WAV, recording from the microphone (level meter)
//   speech.js         speech: Read aloud on replies, Speak replies, voices, playback (Kokoro-82M)
//   voiceclone.js     voice cloning: a recording, training with a live loss curve, my voices (saved, exported)

import { $, S } from './state.js';
import { showError } from './ui.js';
import { call } from './worker-client.js';
import { SAMPLING, restoreSettings, saveSettings, settings } from './settings.js';
import { loadConversations, newConversation, onSelect, saveConversation, DB } from './conversations.js';
import { fetchServerModels, loadDroppedFiles, refreshCache, selectTab, setupModels, showGpuNotice } from './models.js';
import { regenerate, send, setActive, startNewChat, stop } from './chat.js';
import { addClip, addFiles, setupAttachments } from './attachments.js';
import { setupRecorder } from './audio.js';
import { refreshVoices, setupSpeech } from './speech.js';
import { setupVoiceClone } from './voiceclone.js';
import { setupDiffusion } from './diffusion.js';

function onDrop(ev) {
  ev.preventDefault();
  document.body.classList.remove('dragging');
  const files = [...(ev.dataTransfer ? ev.dataTransfer.files : [])];
  const models = files.filter(f => /\.gguf$/i.test(f.name));
  if (models.length) loadDroppedFiles(models);
  const rest = files.filter(f => !models.includes(f));
  if (rest.length) addFiles(rest);
}

// {problem} when this browser cannot run models, else {adapter} (the worker asks for its own adapter later;
// this one tells the page, before any model is loaded, whether the GPU is emulated in software).
async function checkWebGPU() {
  if (!('gpu' in navigator) || !navigator.gpu) {
    return { problem: { kind: 'no-webgpu', message: 'This browser cannot run models: WebGPU is not available. Use a recent Chrome or Edge with WebGPU turned on.', detail: 'navigator.gpu is missing' } };
  }
  try {
    const a = await navigator.gpu.requestAdapter();
    if (!a) return { problem: { kind: 'no-webgpu', message: 'This browser cannot run models: WebGPU is turned on but no GPU adapter is available (the GPU may be blocked or unsupported).', detail: 'requestAdapter() returned null' } };
    return { adapter: a };
  } catch (e) {
    return { problem: { kind: 'no-webgpu', message: 'This browser cannot run models: asking for a GPU adapter failed.', detail: String(e) } };
  }
}

async function start() {
  setupModels();
  selectTab('server');
  restoreSettings();
  if (settings.tab) selectTab(settings.tab);
  setupAttachments();
  setupRecorder(addClip);
  setupSpeech();
  setupVoiceClone().catch(e => console.warn('voice cloning:', e));
  setupDiffusion();
  onSelect(setActive);
  $('composer').onsubmit = send;
  $('prompt').onkeydown = e => { if (e.key === 'Enter' && !e.shiftKey) send(e); };
  $('stop').onclick = stop;
  $('regenerate').onclick = regenerate;
  $('new-chat').onclick = startNewChat;
  $('system').onchange = () => { S.active.system = $('system').value; saveConversation(S.active); };
  for (const k of SAMPLING) $(k).onchange = saveSettings;
  document.addEventListener('dragover', e => { e.preventDefault(); document.body.classList.add('dragging'); });
  document.addEventListener('dragleave', e => { if (!e.relatedTarget) document.body.classList.remove('dragging'); });
  document.addEventListener('drop', onDrop);

  await DB.open();
  const convs = await loadConversations();
  const activeId = localStorage.getItem('rullama.active');
  setActive(convs.find(c => c.id === activeId) || convs.sort((a, b) => b.updated - a.updated)[0] || newConversation());

  const { problem: gpuProblem, adapter } = await checkWebGPU();
  if (adapter) showGpuNotice(adapter);
  if (gpuProblem) {
    showError(gpuProblem);
    $('load').disabled = true;
    $('python-pill').textContent = 'no WebGPU';
    await fetchServerModels(); // still show what this server offers
    return;
  }
  // Start Python now, so that it is ready when a model is chosen; then list the speech model's voices.
  call('boot').then(refreshVoices, showError);
  await Promise.all([fetchServerModels(), refreshCache()]);
  S.started = true;
}

start().catch(e => showError({ kind: 'internal', message: 'The app could not start.', detail: String(e && e.stack || e) }));
