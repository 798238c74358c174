// The browser half of tools/check_fullsize_page.py: the web app in headless Chromium (Debian's /usr/bin/chromium,
// WebGPU) loads the served model over HTTP Range, replies greedily, then keeps a copy in OPFS, loads that and
// replies again. Heaps are sampled over CDP all along: the page's JS heap (Performance.getMetrics), the worker's
// (Runtime.getHeapUsage in its target) and Pyodide's wasm memory (the worker's WebAssembly.Memory objects, found
// with Runtime.queryObjects: the worker's module scope is not reachable otherwise).
//
// Usage: node tools/check_fullsize_page.mjs '{"url": "http://127.0.0.1:PORT/", "artifacts": DIR, "prompt": "Hi",
//   "max_tokens": 3, "skip_opfs": false, "http_chat": true, "timeout_s": 5400}'
// ("probe": true only starts the page and prints one heap sample: a quick check of the CDP readings.)
// Prints progress lines, then one line `RESULT:{json}`.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const here = path.dirname(new URL(import.meta.url).pathname);
const require = createRequire(path.resolve(here, '../web/package.json'));
const { chromium } = require('playwright-core');

const cfg = JSON.parse(process.argv[2]);
const LONG = (cfg.timeout_s || 5400) * 1000;
const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s]`, ...a);
fs.mkdirSync(cfg.artifacts, { recursive: true });

const app = (page, fn, arg) => page.evaluate(fn, arg);
const until = (page, fn, arg, timeout = LONG) => page.waitForFunction(fn, arg, { timeout, polling: 500 });

// CDP to the page and, through it, to the app's worker (Target.sendMessageToTarget: Playwright's CDPSession has
// no child sessions of its own).
class Heaps {
  constructor(cdp) {
    this.cdp = cdp;
    this.worker = null; // its CDP session id
    this.pending = new Map();
    this.next = 1;
    this.peak = { page_js: 0, worker_js: 0, wasm: 0 };
    this.samples = 0;
    cdp.on('Target.attachedToTarget', e => {
      if (e.targetInfo.type === 'worker' && !this.worker) { this.worker = e.sessionId; log('worker attached', e.targetInfo.url); }
    });
    cdp.on('Target.receivedMessageFromTarget', e => {
      const m = JSON.parse(e.message);
      const p = m.id && this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.error) p.reject(new Error(m.error.message)); else p.resolve(m.result);
    });
  }

  async start() {
    await this.cdp.send('Performance.enable');
    await this.cdp.send('Target.setAutoAttach', { autoAttach: true, waitForDebuggerOnStart: false, flatten: false });
  }

  // A CDP call in the worker; null when it has not answered within `ms` (a long Python call holds it).
  inWorker(method, params = {}, ms = 60000) {
    if (!this.worker) return Promise.resolve(null);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.pending.delete(id); log('worker did not answer', method); resolve(null); }, ms);
      this.pending.set(id, { resolve: v => { clearTimeout(timer); resolve(v); }, reject: e => { clearTimeout(timer); reject(e); } });
      this.cdp.send('Target.sendMessageToTarget', { sessionId: this.worker, message: JSON.stringify({ id, method, params }) })
        .catch(reject);
    });
  }

  // Pyodide's wasm memory (web/worker.js's rullamaWasmBytes: it only grows, so this is its peak too).
  async wasmBytes() {
    const r = await this.inWorker('Runtime.evaluate', { expression: 'self.rullamaWasmBytes && self.rullamaWasmBytes()', returnByValue: true });
    return r && r.result ? r.result.value ?? null : null;
  }

  async sample() {
    const m = await this.cdp.send('Performance.getMetrics');
    const get = n => (m.metrics.find(x => x.name === n) || {}).value;
    const page = get('JSHeapTotalSize');
    if (page) this.peak.page_js = Math.max(this.peak.page_js, page);
    const w = await this.inWorker('Runtime.getHeapUsage').catch(() => null);
    if (w) this.peak.worker_js = Math.max(this.peak.worker_js, w.totalSize);
    const wasm = await this.wasmBytes().catch(() => null);
    if (wasm) this.peak.wasm = Math.max(this.peak.wasm, wasm);
    this.samples += 1;
    return { page_js: page, worker_js: w && w.totalSize, worker_js_used: w && w.usedSize, wasm };
  }
}

// PLE rows read from the OPFS copy in the worker, as the model reads them (a sync access handle in the
// "readwrite-unsafe" mode, one row at a random id per read): {n, mean_ms, median_ms, p95_ms, max_ms}. Many rows,
// where a reply's decode steps give two or three. {offset, row_bytes, rows, n} from the Python side.
async function pleBench(heaps, b) {
  const expr = `(async () => {
    const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('models');
    let fh = null;
    for await (const [name, h] of dir.entries()) if (name.endsWith('.gguf')) fh = h;
    const handle = await fh.createSyncAccessHandle({ mode: 'readwrite-unsafe' });
    const buf = new Uint8Array(${b.row_bytes});
    const ms = [];
    try {
      for (let i = 0; i < ${b.n}; i++) {
        const row = Math.floor(Math.random() * ${b.rows});
        const t = performance.now();
        const got = handle.read(buf, { at: ${b.offset} + row * ${b.row_bytes} });
        ms.push(performance.now() - t);
        if (got !== ${b.row_bytes}) throw new Error('short read ' + got);
      }
    } finally { handle.close(); }
    ms.sort((x, y) => x - y);
    return { n: ms.length, mean_ms: ms.reduce((a, x) => a + x, 0) / ms.length, median_ms: ms[ms.length >> 1],
      p95_ms: ms[Math.floor(ms.length * 0.95)], max_ms: ms[ms.length - 1] };
  })()`;
  const r = await heaps.inWorker('Runtime.evaluate', { expression: expr, awaitPromise: true, returnByValue: true }, 300000);
  const v = r && (r.result.value || { error: r.exceptionDetails && r.exceptionDetails.exception && r.exceptionDetails.exception.description });
  log('ple bench', JSON.stringify(v));
  return v;
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rullama-fullsize-'));
  const args = ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic', '--enable-precise-memory-info'];
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: '/usr/bin/chromium', headless: true, args,
    viewport: { width: 1280, height: 760 } });
  const out = { progress_texts: [] };
  try {
    const page = ctx.pages()[0] || (await ctx.newPage());
    page.on('pageerror', e => log('[pageerror]', e.message));
    page.on('console', m => { if (m.type() === 'error' || m.type() === 'warning') log('[console]', m.text()); });
    const heaps = new Heaps(await ctx.newCDPSession(page));
    await heaps.start();
    // Sampled every second while the page works, and the progress line whenever its text changes.
    let lastText = '';
    // The worker answers CDP only between its tasks (a long Python call holds it): one sample at a time.
    let sampling = false;
    const timer = setInterval(async () => {
      if (!sampling) {
        sampling = true;
        heaps.sample().catch(() => {}).finally(() => { sampling = false; });
      }
      try {
        const t = await page.textContent('#progress-text');
        if (t && t !== lastText) {
          lastText = t;
          out.progress_texts.push(t);
          log('progress:', t);
        }
      } catch { /* the page is navigating */ }
    }, 1000);

    await page.goto(cfg.url);
    await until(page, () => window.rullamaApp && window.rullamaApp.started && window.rullamaApp.python);
    log('page ready (Python started)');
    if (cfg.probe) { // the heap readings alone, on the started page
      log('sample', JSON.stringify(await heaps.sample()));
      clearInterval(timer);
      return { ok: true, probe: true };
    }
    out.server_models = await app(page, () => document.getElementById('server-models').textContent);

    const load = async keep => {
      if (await page.isHidden('#loader')) await page.click('#toggle-loader');
      await page.click('[role=tab][data-tab=server]');
      if (keep) await page.check('#keep-copy'); else await page.uncheck('#keep-copy');
      await app(page, () => { window.rullamaApp.lastError = null; window.rullamaApp.model = null; });
      await page.click('#load');
      await until(page, () => !window.rullamaApp.busy && (window.rullamaApp.model || window.rullamaApp.lastError));
      const r = await app(page, () => {
        const e = window.rullamaApp.lastError;
        return { model: window.rullamaApp.model, download: window.rullamaApp.lastDownload,
          error: e && { kind: e.kind, message: e.message || String(e), detail: e.detail, shown: document.getElementById('error-message').textContent } };
      });
      if (r.error) throw new Error('load failed: ' + JSON.stringify(r.error));
      log('loaded', r.model.source, JSON.stringify(r.model.seconds), 'wall', r.model.wall_seconds);
      await page.screenshot({ path: path.join(cfg.artifacts, `fullsize-loaded-${r.model.source}.png`) });
      return r;
    };
    const chat = async () => {
      if (await page.isVisible('#new-chat')) await page.click('#new-chat');
      await page.fill('#temperature', '0');
      await page.fill('#max_tokens', String(cfg.max_tokens));
      await app(page, () => { window.rullamaApp.lastReply = null; window.rullamaApp.streaming = null; });
      await page.fill('#prompt', cfg.prompt);
      await page.click('#send');
      await until(page, () => window.rullamaApp.lastReply && !window.rullamaApp.busy);
      const r = await app(page, () => window.rullamaApp.lastReply);
      log('reply', JSON.stringify({ ids: r.ids, stats: r.stats }));
      return { ids: r.ids, stats: r.stats, host: r.stats && r.stats.host };
    };

    if (cfg.http !== false) {
      const http = await load(false);
      out.http = { load: { seconds: http.model.seconds, wall_seconds: http.model.wall_seconds, fetched: http.model.fetched,
        gpu_memory: http.model.gpu_memory, adapter: http.model.adapter }, ...(cfg.http_chat === false ? {} : await chat()) };
      out.http.heaps = await heaps.sample();
    }
    if (!cfg.skip_opfs) {
      const opfs = await load(true);
      out.opfs = { load: { seconds: opfs.model.seconds, wall_seconds: opfs.model.wall_seconds, fetched: opfs.model.fetched,
        source: opfs.model.source }, download: opfs.download };
      if (cfg.ple_bench) out.opfs.ple_bench = await pleBench(heaps, cfg.ple_bench);
      if (cfg.opfs_chat !== false) Object.assign(out.opfs, await chat());
      out.opfs.heaps = await heaps.sample();
    }
    clearInterval(timer);
    await heaps.sample();
    out.heaps = { wasm_bytes: (await heaps.wasmBytes()) || heaps.peak.wasm || null, worker_js_peak_bytes: heaps.peak.worker_js || null,
      page_js_peak_bytes: heaps.peak.page_js || null, samples: heaps.samples };
    log('heaps', JSON.stringify(out.heaps));
    return { ok: true, ...out };
  } finally {
    await ctx.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

let result;
try {
  result = await main();
} catch (e) {
  result = { ok: false, error: String(e && e.stack || e) };
}
result.seconds = (Date.now() - t0) / 1000;
console.log('RESULT:' + JSON.stringify(result));
process.exit(0);
