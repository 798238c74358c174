// The diffusion mode: replies of a diffusion model (DiffusionGemma), which writes a whole canvas of tokens at a
// time and sharpens it step by step (rullama_py.diffusion through webapp.diffuse and the worker's diffuse op).
//
// - The mode: Chat or Diffusion, above the messages. Loading a model picks its mode; choosing the other one
//   says in a sentence that this model cannot run that way (and sending then is refused by Python in the same
//   words, the message going back to the composer).
// - A reply: the assistant bubble shows the canvas in place, a cell per position with the token the model
//   thinks most likely there: bold and coloured where the step accepted its draw, dimmed where the guess
//   changed since the step before, greyed after the end of the text. Above it the step counter ("step 7/48 ·
//   canvas 1") and the mean entropy of every step so far (log scale), drawn as the steps arrive; the text of
//   canvases already finished stands above the grid. Stop ends it after the step running; what the canvas
//   shows then is kept. When it ends the bubble is a reply like any other, with "N tokens in M forwards".
// - Settings (the settings column): steps (empty: the model's) and seed; Max tokens of the sampling settings.
//
// For tests and the curious, window.rullamaApp.diffusion holds `steps` (each step's event without its pieces),
// `last` (the last event, whole) and `log`; S.mode is the mode, S.lastReply the last reply as in chat mode
// ({ids, text, stats}).

import { $, S, visible } from './state.js';
import { clearChatError, clearError, notice, showChatError, updateButtons } from './ui.js';
import { call, on } from './worker-client.js';
import { persistSettings, samplingRequest, settings } from './settings.js';
import { backToComposer, messageElement, messageHooks, renderMessages, replyModes } from './chat.js';
import { saveConversation } from './conversations.js';
import { withMediaBytes } from './attachments.js';
import { modelHooks } from './models.js';

const D = (S.diffusion = { steps: [], last: null, log: [] });
S.mode = 'chat';

// Errors about the request itself, before the model ran: the message goes back into the composer.
const BEFORE_RUN = new Set(['not-diffusion', 'diffusion-media', 'diffusion']);
const MODE_ERROR = 'mode';
const MODE_ERRORS = new Set([MODE_ERROR, 'diffusion-model', 'not-diffusion']); // said in the page or by Python

const note = (what, extra = {}) => D.log.push({ what, t: performance.now(), ...extra });

// The sentence for a mode the loaded model does not run in (the page's own; Python says the same on send).
function mismatch(mode) {
  const m = S.model;
  if (!m) return null;
  if (mode === 'diffusion' && !m.diffusion) {
    return `${m.name} is not a diffusion model: it writes token by token, so it cannot run in diffusion mode. Switch the mode to Chat.`;
  }
  if (mode === 'chat' && m.diffusion) {
    return `${m.name} is a diffusion model: it writes a whole canvas at a time, not token by token. Switch the mode to Diffusion to run it.`;
  }
  return null;
}

export function setMode(mode) {
  S.mode = mode === 'diffusion' ? 'diffusion' : 'chat';
  for (const r of document.querySelectorAll('#mode-bar input[name=mode]')) r.checked = r.value === S.mode;
  const m = S.model;
  const d = m && m.diffusion;
  $('mode-hint').textContent = S.mode === 'diffusion'
    ? (d ? `a canvas of ${d.canvas_length} tokens at a time, sharpened step by step` : 'for diffusion models (DiffusionGemma)')
    : 'token by token';
  document.body.classList.toggle('diffusion-mode', S.mode === 'diffusion');
  const why = mismatch(S.mode);
  if (why) showChatError({ kind: MODE_ERROR, message: why, detail: '' });
  else if (MODE_ERRORS.has($('chat-error').dataset.kind)) clearChatError(); // the mode fits now
  note('mode', { mode: S.mode, refused: !!why });
}

// ---- the reply bubble: counter, entropy chart, finished text, the canvas grid --------------------------------

function canvasView() {
  const root = document.createElement('div');
  root.className = 'diffusion';
  root.innerHTML = '<div class="diff-head"><span class="diff-counter">Reading the prompt…</span>'
    + '<canvas class="diff-chart" width="220" height="48" aria-label="Mean entropy per step (log scale)"></canvas></div>'
    + '<div class="diff-done"></div><div class="diff-grid" aria-label="The canvas: the most likely token at each position"></div>';
  return { root, counter: root.querySelector('.diff-counter'), chart: root.querySelector('.diff-chart'),
    done: root.querySelector('.diff-done'), grid: root.querySelector('.diff-grid'), cells: [] };
}

// A token as a cell's text: a space shown as a middle dot, line breaks as the return sign, nothing as ∅.
const cellText = p => (p === '' ? '∅' : visible(p.replace(/ /g, '·').replace(/\r?\n/g, '⏎')));

function drawGrid(view, e) {
  const n = e.pieces.length;
  while (view.cells.length < n) {
    const c = document.createElement('span');
    view.grid.append(c);
    view.cells.push(c);
  }
  while (view.cells.length > n) view.cells.pop().remove();
  for (let i = 0; i < n; i++) {
    const c = view.cells[i];
    c.textContent = cellText(e.pieces[i]);
    let cls = 'tok';
    if (e.accepted[i]) cls += ' accepted';
    if (!e.settled[i]) cls += ' unsettled';
    if (e.end != null && i >= e.end) cls += i === e.end ? ' end' : ' after-end';
    c.className = cls;
  }
}

// Mean entropy per step, every step of this reply (log scale); a thin line where a canvas ended.
function drawChart(canvas, steps) {
  const g = canvas.getContext('2d');
  const w = canvas.width, h = canvas.height, pad = { l: 3, r: 3, t: 12, b: 3 };
  g.clearRect(0, 0, w, h);
  g.fillStyle = '#fafbfc';
  g.fillRect(0, 0, w, h);
  const vals = steps.map(s => Math.max(s.mean_entropy, 1e-6));
  g.fillStyle = '#6b7280';
  g.font = '10px system-ui, sans-serif';
  if (!vals.length) return;
  let top = Math.log10(Math.max(...vals)), bottom = Math.log10(Math.min(...vals));
  if (top - bottom < 0.3) { top += 0.15; bottom -= 0.15; }
  const n = Math.max(steps.length - 1, Math.min(steps[0].steps, 48) - 1, 1);
  const X = i => pad.l + (i / n) * (w - pad.l - pad.r);
  const Y = v => pad.t + ((top - Math.log10(v)) / (top - bottom)) * (h - pad.t - pad.b);
  g.strokeStyle = '#e4e7ec';
  g.lineWidth = 1;
  for (let d = Math.ceil(bottom); d <= Math.floor(top); d++) { // decades
    g.beginPath(); g.moveTo(pad.l, Y(10 ** d)); g.lineTo(w - pad.r, Y(10 ** d)); g.stroke();
  }
  g.strokeStyle = '#c5cad3';
  steps.forEach((s, i) => { if (s.block_done && i < steps.length - 1) { g.beginPath(); g.moveTo(X(i) + 0.5, pad.t); g.lineTo(X(i) + 0.5, h); g.stroke(); } });
  g.strokeStyle = '#2f6fde';
  g.lineWidth = 1.5;
  g.beginPath();
  vals.forEach((v, i) => (i ? g.lineTo(X(i), Y(v)) : g.moveTo(X(i), Y(v))));
  g.stroke();
  g.fillStyle = '#2f6fde';
  g.fillRect(X(vals.length - 1) - 1.5, Y(vals[vals.length - 1]) - 1.5, 3, 3);
  g.fillStyle = '#1d2330';
  g.fillText(`mean entropy ${fmtEntropy(vals[vals.length - 1])} (log scale)`, pad.l, 10);
}

const fmtEntropy = v => (v >= 0.01 ? v.toFixed(3) : v.toExponential(1));

function counterText(e) {
  return `step ${e.step}/${e.steps}, canvas ${e.block + 1} · ${e.n_accepted} of ${e.canvas_length} accepted · t ${e.temperature.toFixed(2)}`;
}

const plural = (n, one, many = one + 's') => `${n} ${n === 1 ? one : many}`;

function metaLine(st) {
  const why = { stop: 'finished', length: 'max tokens reached', context: 'context full', stopped: 'stopped' }[st.finish_reason] || st.finish_reason;
  const per = st.forwards ? ` (${st.tokens_per_forward.toFixed(2)} per forward)` : '';
  return `${plural(st.tokens, 'token')} in ${plural(st.forwards, 'forward')}${per} · ${plural(st.canvases, 'canvas', 'canvases')} · ${why}`;
}

function request() {
  const num = id => {
    const v = $(id).value.trim();
    return v === '' ? null : parseInt(v, 10);
  };
  return { steps: num('diff-steps'), seed: num('diff-seed') ?? 0, max_tokens: samplingRequest().max_tokens };
}

async function diffuseReply() {
  const c = S.active;
  c.system = $('system').value;
  const history = (c.system.trim() ? [{ role: 'system', content: c.system }] : []).concat(c.messages);
  const last = c.messages[c.messages.length - 1];
  S.busy = S.generating = true;
  updateButtons();
  clearError();
  notice('');
  $('status').textContent = '';
  const m = { role: 'assistant', content: '' };
  const el = messageElement(m);
  el.classList.add('streaming', 'diffusing');
  const view = canvasView();
  el.insertBefore(view.root, el.querySelector('.body'));
  const box = $('messages');
  box.append(el);
  box.scrollTop = box.scrollHeight;
  D.steps = [];
  D.last = null;
  note('start');
  S.streaming = { n: 0 };
  on('diffusion', e => {
    const { pieces, ...brief } = e;
    D.steps.push(brief);
    D.last = e;
    S.streaming.n = D.steps.length;
    view.counter.textContent = counterText(e);
    drawChart(view.chart, D.steps);
    if (e.block_done) view.done.textContent = visible(e.text);
    drawGrid(view, e);
    const rate = e.seconds > 0 ? ` · ${(D.steps.length / e.seconds).toFixed(1)} steps/s` : '';
    $('status').textContent = `diffusing · canvas ${e.block + 1} · step ${e.step}/${e.steps}${rate}`;
  });
  try {
    const { messages, transfer } = await withMediaBytes(history);
    const st = await call('diffuse', { messages, request: request() }, transfer);
    S.lastReply = { ids: st.ids, text: st.text, stats: st, steps: D.steps.length };
    m.content = st.text;
    m.meta = metaLine(st);
    el.replaceWith(messageElement(m));
    c.messages.push(m);
    $('status').textContent = `${plural(st.steps, 'step')} in ${st.seconds.toFixed(1)} s · ${st.tokens_per_forward.toFixed(2)} tokens per forward`;
    note('done', { finish: st.finish_reason });
    await saveConversation(c);
    for (const fn of messageHooks.replied) fn(m, st); // Speak replies reads it aloud as any reply
  } catch (e) {
    el.remove();
    S.lastReply = { ids: [], text: '', error: e };
    note('error', { kind: e.kind });
    if (BEFORE_RUN.has(e.kind) && last && last.role === 'user' && c.messages[c.messages.length - 1] === last) {
      c.messages.pop();
      backToComposer(last);
      renderMessages();
      await saveConversation(c);
      S.lastReply.restoredToComposer = true;
    }
    showChatError(e);
  } finally {
    S.busy = S.generating = false;
    S.streaming = null;
    updateButtons();
  }
}

export function setupDiffusion() {
  replyModes.diffusion = diffuseReply;
  for (const r of document.querySelectorAll('#mode-bar input[name=mode]')) r.onchange = () => r.checked && setMode(r.value);
  if (settings.diff_steps !== undefined) $('diff-steps').value = settings.diff_steps;
  if (settings.diff_seed !== undefined) $('diff-seed').value = settings.diff_seed;
  for (const id of ['diff-steps', 'diff-seed']) {
    $(id).onchange = () => { settings[id.replace('-', '_')] = $(id).value; persistSettings(); };
  }
  modelHooks.loaded.push(info => {
    $('diff-steps').placeholder = info.diffusion ? String(info.diffusion.steps) : "model's";
    setMode(info.diffusion ? 'diffusion' : 'chat');
  });
  setMode('chat');
}
