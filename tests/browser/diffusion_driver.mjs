// Drives the web app's diffusion mode in headless Chromium (Debian's /usr/bin/chromium, WebGPU on SwiftShader)
// with npm playwright-core, and reports what the page showed; tests/browser/test_diffusion_browser.py makes the
// assertions (with the native run of the same prompt and seed). The page's own driver for the chat scenarios is
// driver.mjs; this one is the diffusion scenario alone.
//
// Usage: node tests/browser/diffusion_driver.mjs '{"url": ..., "artifacts": DIR, "prompt": ..., "steps": N, ...}'
// Prints progress lines, then one line `RESULT:{json}`. Screenshots go to <artifacts>/diffusion-NN-<step>.png.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const here = path.dirname(new URL(import.meta.url).pathname);
const require = createRequire(path.resolve(here, '../../web/package.json'));
const { chromium } = require('playwright-core');

const cfg = JSON.parse(process.argv[2]);
const LONG = (cfg.timeout_s || 600) * 1000;
const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s]`, ...a);
fs.mkdirSync(cfg.artifacts, { recursive: true });
let shotNo = 0;
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'rullama-chromium-'));

async function shot(page, step) {
  shotNo += 1;
  const file = path.join(cfg.artifacts, `diffusion-${String(shotNo).padStart(2, '0')}-${step}.png`);
  await page.screenshot({ path: file });
  return file;
}

const app = (page, fn, arg) => page.evaluate(fn, arg);
const until = (page, fn, arg, timeout = LONG) => page.waitForFunction(fn, arg, { timeout, polling: 100 });

async function load(page, modelId) {
  if (await page.isHidden('#loader')) await page.click('#toggle-loader');
  await page.click('[role=tab][data-tab=server]');
  await page.selectOption('#server-models', modelId);
  await app(page, () => { window.rullamaApp.lastError = null; window.rullamaApp.model = null; });
  await page.click('#load');
  await until(page, () => !window.rullamaApp.busy && (window.rullamaApp.model || window.rullamaApp.lastError));
  const r = await app(page, () => ({ model: window.rullamaApp.model, error: window.rullamaApp.lastError, mode: window.rullamaApp.mode,
    checked: document.querySelector('#mode-bar input:checked').value, pill: document.getElementById('model-pill').textContent }));
  log('loaded', JSON.stringify({ name: r.model && r.model.name, mode: r.mode, error: r.error, seconds: r.model && r.model.seconds }));
  if (r.error) throw new Error('load failed: ' + JSON.stringify(r.error));
  return r;
}

// What the reply bubble shows, read from the page (the grid's cells and their classes, the counter, the chart).
const bubble = page => app(page, () => {
  const d = document.querySelector('#messages .msg.diffusing');
  if (!d) return null;
  const cells = [...d.querySelectorAll('.diff-grid .tok')];
  const chart = d.querySelector('.diff-chart');
  const px = chart.getContext('2d').getImageData(0, 0, chart.width, chart.height).data;
  let blue = 0;
  for (let i = 0; i < px.length; i += 4) if (px[i + 2] > 200 && px[i] < 80 && px[i + 1] < 150) blue++;
  return { counter: d.querySelector('.diff-counter').textContent, done: d.querySelector('.diff-done').textContent,
    cells: cells.map(c => c.textContent), accepted: cells.map(c => c.classList.contains('accepted') ? 1 : 0),
    unsettled: cells.map(c => c.classList.contains('unsettled') ? 1 : 0), chartBlue: blue,
    event: (window.rullamaApp.diffusion.steps.length || null) && window.rullamaApp.diffusion.steps[window.rullamaApp.diffusion.steps.length - 1] };
});

// Every state of the bubble the page painted (read on each animation frame), and the gaps between frames.
const watch = page => app(page, () => {
  const w = window.__diffWatch = { frames: [], last: performance.now(), on: true, seen: [], counter: '' };
  const tick = () => {
    const t = performance.now();
    w.frames.push(t - w.last);
    w.last = t;
    const d = document.querySelector('#messages .msg.diffusing');
    const counter = d && d.querySelector('.diff-counter').textContent;
    if (counter && counter !== w.counter && window.rullamaApp.diffusion.steps.length) { // a step is painted
      w.counter = counter;
      const cells = [...d.querySelectorAll('.diff-grid .tok')];
      const s = window.rullamaApp.diffusion.steps;
      w.seen.push({ counter, cells: cells.length, accepted: cells.filter(c => c.classList.contains('accepted')).length,
        unsettled: cells.filter(c => c.classList.contains('unsettled')).length, step: s.length && s[s.length - 1].step,
        block: s.length && s[s.length - 1].block, n_accepted: s.length && s[s.length - 1].n_accepted,
        n_unsettled: s.length && s[s.length - 1].settled.filter(x => !x).length });
    }
    if (w.on) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
});

const unwatch = page => app(page, () => {
  const w = window.__diffWatch;
  w.on = false;
  const g = w.frames.slice(1).sort((a, b) => a - b);
  return { seen: w.seen, frames: { n: g.length, max: g[g.length - 1], p99: g[Math.floor(g.length * 0.99)] } };
});

async function send(page, text) {
  // Forget the previous reply's state, so that waits below see only this one.
  await app(page, () => { const S = window.rullamaApp; S.lastReply = null; S.lastError = null; S.diffusion.steps = []; S.diffusion.last = null; });
  await page.fill('#prompt', text);
  await page.click('#send');
}

const replied = page => until(page, () => window.rullamaApp.lastReply && !window.rullamaApp.busy);

// The reply once it is done: what the page kept (lastReply, every step's event) and what the bubble shows.
async function finished(page) {
  await replied(page);
  const r = await app(page, () => { const S = window.rullamaApp; const e = S.lastReply.error;
    return { reply: { ...S.lastReply, error: e && { kind: e.kind, message: e.message } }, steps: S.diffusion.steps }; });
  r.shown = (await shown(page)).slice(-1)[0];
  r.status = await page.textContent('#status');
  log('replied', JSON.stringify({ steps: r.steps.length, text: r.reply.text, error: r.reply.error }));
  return r;
}

const shown = page => app(page, () => [...document.querySelectorAll('#messages .msg')].map(d => ({
  role: d.classList.contains('user') ? 'user' : 'assistant', text: d.querySelector('.body').textContent,
  meta: d.querySelector('.meta') ? d.querySelector('.meta').textContent : null })));

const chatError = page => app(page, () => ({ hidden: document.getElementById('chat-error').hidden,
  kind: document.getElementById('chat-error').dataset.kind, message: document.getElementById('chat-error-message').textContent }));

async function scenario() {
  const ctx = await chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true,
    args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'], viewport: { width: 1280, height: 800 } });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('pageerror', e => log('[pageerror]', e.message));
  page.on('console', m => { if (m.type() === 'error' || m.type() === 'warning') log('[console]', m.text()); });
  const out = {};
  await page.goto(cfg.url);
  await until(page, () => window.rullamaApp && window.rullamaApp.started && window.rullamaApp.python);
  log('page ready');
  await page.fill('#max-context', String(cfg.max_context));

  // The diffusion model: its mode is picked on load.
  out.load = await load(page, 'default');
  await shot(page, 'loaded');

  // A reply with a fixed seed: the canvas in place, step by step.
  await page.fill('#diff-steps', String(cfg.steps));
  await page.fill('#diff-seed', String(cfg.seed));
  await page.fill('#max_tokens', String(cfg.max_tokens));
  await watch(page);
  const tSend = Date.now();
  await send(page, cfg.prompt);
  out.shots = [];
  for (const k of cfg.shot_steps) {
    try {
      await until(page, n => window.rullamaApp.diffusion.steps.length >= n || (window.rullamaApp.lastReply && !window.rullamaApp.busy), k, 120000);
    } catch { break; }
    const b = await bubble(page);
    if (!b) break; // the reply ended before this step was shown
    await shot(page, `step-${k}`);
    try { // the bubble alone, larger: the cells and the chart
      shotNo += 1;
      await page.locator('#messages .msg.diffusing').screenshot({ path: path.join(cfg.artifacts, `diffusion-${String(shotNo).padStart(2, '0')}-step-${k}-bubble.png`) });
    } catch { /* the reply ended in between */ }
    out.shots.push({ k, ...b });
  }
  out.sharpen = await finished(page);
  out.sharpen.seconds = (Date.now() - tSend) / 1000;
  Object.assign(out, await unwatch(page));
  await shot(page, 'replied');

  // The same prompt and seed with one step a canvas, in a new chat (the history is the prompt): each canvas is
  // its first step's argmax (see the test).
  await page.click('#new-chat');
  await page.fill('#diff-steps', String(cfg.same_steps));
  await page.fill('#max_tokens', String(cfg.same_max_tokens));
  await send(page, cfg.prompt);
  out.same = await finished(page);
  await shot(page, 'replied-one-step');
  // Stop: a long run stopped after a few steps; the text of the step running stays.
  await page.fill('#diff-steps', String(cfg.stop_steps));
  await send(page, cfg.prompt);
  await until(page, () => window.rullamaApp.diffusion.steps.length >= 3);
  await page.click('#stop');
  await replied(page);
  out.stopped = await app(page, () => ({ reply: { ...window.rullamaApp.lastReply, error: undefined }, steps: window.rullamaApp.diffusion.steps.length,
    last: window.rullamaApp.diffusion.last && { ...window.rullamaApp.diffusion.last } }));
  out.stopped.shown = (await shown(page)).slice(-1)[0];
  await shot(page, 'stopped');

  // The wrong mode for this model: said when chosen, and refused (the message back in the composer) on send.
  await page.check('#mode-bar input[value=chat]');
  out.chose_chat = await chatError(page);
  await shot(page, 'mode-chat-refused');
  const before = (await shown(page)).length;
  await send(page, 'in chat mode');
  await until(page, () => !window.rullamaApp.busy && window.rullamaApp.lastError && window.rullamaApp.lastError.kind === 'diffusion-model');
  out.chat_refused = { ...(await chatError(page)), composer: await page.inputValue('#prompt'), messages: (await shown(page)).length - before };
  await shot(page, 'chat-refused');
  await page.fill('#prompt', '');
  await page.check('#mode-bar input[value=diffusion]');
  out.back_to_diffusion = await chatError(page);

  // A chat model: its mode is Chat; choosing Diffusion says it cannot, and sending in that mode is refused.
  out.load_chat = await load(page, cfg.chat_model_id);
  await page.check('#mode-bar input[value=diffusion]');
  out.chose_diffusion = await chatError(page);
  await shot(page, 'mode-diffusion-refused');
  const before2 = (await shown(page)).length;
  await send(page, 'in diffusion mode');
  await until(page, () => !window.rullamaApp.busy && window.rullamaApp.lastError && window.rullamaApp.lastError.kind === 'not-diffusion');
  out.diffusion_refused = { ...(await chatError(page)), composer: await page.inputValue('#prompt'), messages: (await shown(page)).length - before2 };
  await shot(page, 'diffusion-refused');
  await ctx.close();
  return out;
}

let result;
try {
  result = { ok: true, ...(await scenario()) };
} catch (e) {
  result = { ok: false, error: String(e && e.stack || e) };
}
result.seconds = (Date.now() - t0) / 1000;
fs.rmSync(profile, { recursive: true, force: true });
console.log('RESULT:' + JSON.stringify(result));
process.exit(0);
