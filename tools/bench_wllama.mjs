// The peer on a machine without a GPU: wllama (llama.cpp compiled to WebAssembly, npm @wllama/wllama) on the real
// Gemma 3 270M in the same headless Chromium as the browser tests (Debian's /usr/bin/chromium, the flags of
// tests/browser/driver.mjs), timed as docs/PERFORMANCE.md's "An emulated GPU" compares it with this app:
// the load of the model and a greedy reply's decode speed, with the reply's text.
//
//     node tools/bench_wllama.mjs [--dir .bench/wllama] [--version 3.8.1] [--model PATH] [--tokens 64]
//         [--threads 1] [--gpu-layers 0] [--ctx 512] [--prompt TEXT] [--timeout-s 1800] [--out FILE]
//
// --dir is where wllama is installed (`npm install @wllama/wllama@VERSION` there when it is missing or another
// version; never web/package.json): a scratch directory such as /tmp/wllama-bench, or the git-ignored .bench/.
// --model defaults to the setup's copy of the embedded default model (rullama_py.assets: $RULLAMA_CACHE or
// ~/.cache/rullama/gemma-3-270m-q4_k_m.gguf), whose sha256 is checked first.
//
// A localhost server serves a blank page, wllama's files and the model (with HTTP Range); it sends no COOP/COEP
// headers, so the page is not cross-origin isolated and wllama runs its single-thread build (--threads 1 says so
// to llama.cpp too). --gpu-layers 0 keeps every layer on the CPU (wasm SIMD); N > 0 offloads N layers to
// llama.cpp's WebGPU backend, here SwiftShader. Each run uses a fresh Chromium profile, so nothing is cached.
//
// Timing, in the page: load_s is loadModelFromUrl from the call to its end (the 253 MB download from localhost
// into wllama's cache, then llama.cpp's load and warm-up; download_s is the first part); the reply is one
// createCompletion of the prompt in the app's Gemma 3 chat turn (the GGUF has no chat template, so llama.cpp's
// chat API would fall back to ChatML and the 270M would only echo the prompt), temperature 0, --tokens tokens
// with end-of-generation ignored, so every run decodes the same count. decode_tok_s is llama.cpp's own
// timings.predicted_per_second (decode steps only); reply_s the whole call's wall time, prefill included.
// Prints progress on stderr and the record as JSON on stdout:
//   {"engine": "wllama", "model": "gemma3-270m", "load_s", "decode_tok_s", "text", "commit", "command", ...}
// --out FILE also writes it there (a JSON list: the record is appended when FILE already holds a list).
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';

const here = path.dirname(new URL(import.meta.url).pathname);
const ROOT = path.resolve(here, '..');
const require = createRequire(path.resolve(ROOT, 'web/package.json'));

const MODEL_NAME = 'gemma-3-270m-q4_k_m.gguf';
const MODEL_SHA256 = 'a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818';
const PROMPT = 'Write a short story about a lighthouse keeper.'; // tools/bench_host_cost.py's prompt
const t0 = Date.now();
const log = (...a) => console.error(`[${((Date.now() - t0) / 1000).toFixed(1)} s]`, ...a);
const fail = msg => { console.error(`bench_wllama: ${msg}`); process.exit(2); };

function parseArgs(argv) {
  const a = { dir: path.join(ROOT, '.bench', 'wllama'), version: '3.8.1', model: null, tokens: 64, threads: 1,
    gpuLayers: 0, ctx: 512, prompt: PROMPT, timeoutS: 1800, out: null };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => { if (i + 1 >= argv.length) fail(`${k} needs a value`); return argv[++i]; };
    const int = (name, min) => { const n = Number(v()); if (!Number.isInteger(n) || n < min) fail(`${name} must be an integer of at least ${min}`); return n; };
    if (k === '--dir') a.dir = path.resolve(v());
    else if (k === '--version') a.version = v();
    else if (k === '--model') a.model = path.resolve(v());
    else if (k === '--tokens') a.tokens = int(k, 1);
    else if (k === '--threads') a.threads = int(k, 1);
    else if (k === '--gpu-layers') a.gpuLayers = int(k, 0);
    else if (k === '--ctx') a.ctx = int(k, 64);
    else if (k === '--prompt') a.prompt = v();
    else if (k === '--timeout-s') a.timeoutS = int(k, 1);
    else if (k === '--out') a.out = path.resolve(v());
    else if (k === '-h' || k === '--help') {
      console.log(fs.readFileSync(new URL(import.meta.url), 'utf8').split('\nimport ')[0]);
      process.exit(0);
    } else fail(`unknown argument ${k} (--help lists them)`);
  }
  return a;
}

const pkgVersion = dir => { try { return JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version; } catch { return null; } };

// wllama in <dir>/node_modules, installed there on demand (a package.json of its own, so npm does not climb up).
function ensureWllama(dir, version) {
  const pkg = path.join(dir, 'node_modules', '@wllama', 'wllama');
  if (pkgVersion(pkg) !== version) {
    fs.mkdirSync(dir, { recursive: true });
    const pj = path.join(dir, 'package.json');
    if (!fs.existsSync(pj)) fs.writeFileSync(pj, JSON.stringify({ private: true, description: 'scratch install for tools/bench_wllama.mjs' }, null, 1));
    log(`npm install @wllama/wllama@${version} in ${dir}`);
    const r = spawnSync('npm', ['install', '--no-audit', '--no-fund', '--ignore-scripts', `@wllama/wllama@${version}`], { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) fail(`npm could not install @wllama/wllama@${version} in ${dir}:\n${(r.stderr || r.stdout || r.error || '').toString().slice(-2000)}`);
  }
  const got = pkgVersion(pkg);
  if (got !== version) fail(`${pkg} is version ${got}, not ${version}`);
  for (const f of ['esm/index.js', 'esm/wasm/wllama.wasm']) {
    if (!fs.existsSync(path.join(pkg, f))) fail(`${path.join(pkg, f)} is missing: this script knows wllama 3.x's layout (esm/index.js, esm/wasm/wllama.wasm)`);
  }
  return pkg;
}

function defaultModel() {
  const env = process.env.RULLAMA_CACHE;
  const cache = env ? path.resolve(env.replace(/^~(?=$|\/)/, os.homedir())) : path.join(os.homedir(), '.cache', 'rullama');
  return path.join(cache, MODEL_NAME);
}

async function sha256(file) {
  const h = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 22 })) h.update(chunk);
  return h.digest('hex');
}

// The GGUF carries no chat template (llama.cpp would fall back to ChatML), so the prompt is the app's Gemma 3 turn
// (rullama_py/chat.py) as text; llama.cpp parses the special tokens and adds <bos> itself (add_bos_token).
const gemma3Turn = text => `<start_of_turn>user\n${text}<end_of_turn>\n<start_of_turn>model\n`;

const TYPES = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.html': 'text/html', '.json': 'application/json' };

const PAGE = `<!doctype html><meta charset="utf-8"><title>wllama bench</title>
<script type="module">
import { Wllama, LogLevel } from '/wllama/esm/index.js';
window.benchWllama = async cfg => {
  const lines = [];
  const keep = (...a) => { const s = a.map(String).join(' '); if (lines.length < 400) lines.push(s); };
  const logger = { debug: () => {}, log: keep, warn: keep, error: keep };
  const wllama = new Wllama({ default: '/wllama/esm/wasm/wllama.wasm' }, { logger, parallelDownloads: 1 });
  const t0 = performance.now();
  let downloaded = null;
  await wllama.loadModelFromUrl(location.origin + '/model.gguf', {
    n_ctx: cfg.ctx, n_threads: cfg.threads, n_gpu_layers: cfg.gpuLayers, useCache: true,
    progressCallback: ({ loaded, total }) => { if (loaded >= total && downloaded === null) downloaded = performance.now(); },
  });
  const t1 = performance.now();
  const t2 = performance.now();
  const r = await wllama.createCompletion({ prompt: cfg.text, max_tokens: cfg.tokens, temperature: 0, ignore_eos: true });
  const t3 = performance.now();
  const info = wllama.getLoadedContextInfo();
  const out = {
    load_s: (t1 - t0) / 1000, download_s: downloaded === null ? null : (downloaded - t0) / 1000,
    reply_s: (t3 - t2) / 1000, text: r.choices[0].text, finish_reason: r.choices[0].finish_reason,
    usage: r.usage || null, timings: r.timings || null, multithread: wllama.isMultithread(),
    threads: wllama.getNumThreads(), webgpu_supported: wllama.isSupportWebGPU(), n_ctx: info.n_ctx,
    cross_origin_isolated: self.crossOriginIsolated, log: lines.filter(s => /webgpu|offload|threads|template|add_bos|error/i.test(s)).slice(0, 40),
  };
  await wllama.exit();
  return out;
};
window.benchReady = true;
</script>`;

function serve(pkgDir, modelPath) {
  const modelSize = fs.statSync(modelPath).size;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    let file = null, type = 'application/octet-stream';
    if (url.pathname === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html', 'Cache-Control': 'no-store' });
      res.end(PAGE);
      return;
    }
    if (url.pathname === '/model.gguf') file = modelPath;
    else if (url.pathname.startsWith('/wllama/')) {
      const p = path.resolve(pkgDir, '.' + decodeURIComponent(url.pathname.slice('/wllama'.length)));
      if (p.startsWith(pkgDir + path.sep) && fs.existsSync(p) && fs.statSync(p).isFile()) {
        file = p;
        type = TYPES[path.extname(p)] || type;
      }
    }
    if (!file) { res.writeHead(404); res.end('not found'); return; }
    const size = file === modelPath ? modelSize : fs.statSync(file).size;
    const m = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range || '');
    let start = 0, end = size - 1, status = 200;
    const headers = { 'Content-Type': type, 'Accept-Ranges': 'bytes', 'Cache-Control': 'no-store' };
    if (m && (m[1] || m[2])) {
      if (m[1] === '') start = Math.max(0, size - Number(m[2]));
      else { start = Number(m[1]); if (m[2]) end = Math.min(Number(m[2]), size - 1); }
      if (start >= size || start > end) { res.writeHead(416, { 'Content-Range': `bytes */${size}` }); res.end(); return; }
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
    }
    headers['Content-Length'] = String(end - start + 1);
    res.writeHead(status, headers);
    if (req.method === 'HEAD') { res.end(); return; }
    fs.createReadStream(file, { start, end }).pipe(res);
  });
  return new Promise(resolve => server.listen(0, '127.0.0.1', () => resolve(server)));
}

function commit() {
  const r = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const modelPath = a.model || defaultModel();
  if (!fs.existsSync(modelPath)) fail(`no model at ${modelPath}: run tools/setup.sh (or python -m rullama_py.assets), or give --model PATH`);
  if (!a.model) {
    const got = await sha256(modelPath);
    if (got !== MODEL_SHA256) fail(`${modelPath} has sha256 ${got}, not the default model's ${MODEL_SHA256}: fetch it again (python -m rullama_py.assets)`);
  }
  if (!fs.existsSync('/usr/bin/chromium')) fail('no /usr/bin/chromium: tools/setup.sh installs Debian\'s chromium');
  let chromium;
  try { ({ chromium } = require('playwright-core')); } catch { fail('playwright-core is not in web/node_modules: run tools/setup.sh'); }
  const pkgDir = ensureWllama(a.dir, a.version);
  const server = await serve(pkgDir, modelPath);
  const url = `http://127.0.0.1:${server.address().port}/`;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wllama-chromium-'));
  // tests/browser/driver.mjs's flags, WebGPU on (SwiftShader here), so the browser is configured as for the app
  const args = ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'];
  const ctx = await chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args });
  let res, err = null;
  try {
    const page = ctx.pages()[0] || (await ctx.newPage());
    page.on('pageerror', e => log('[pageerror]', e.message));
    page.on('console', m => { if (m.type() === 'error') log('[console]', m.text()); });
    page.setDefaultTimeout(a.timeoutS * 1000);
    await page.goto(url);
    await page.waitForFunction(() => window.benchReady === true);
    const adapter = await page.evaluate(async () => {
      const ad = navigator.gpu && (await navigator.gpu.requestAdapter());
      if (!ad) return null;
      const i = ad.info || {};
      return { vendor: i.vendor, architecture: i.architecture, description: i.description, fallback: !!(ad.isFallbackAdapter || i.isFallbackAdapter) };
    });
    const chromiumVersion = (/Chrome\/([\d.]+)/.exec(await page.evaluate(() => navigator.userAgent)) || [])[1] || null;
    log(`Chromium ${chromiumVersion}; WebGPU adapter ${JSON.stringify(adapter)}; loading ${modelPath}`);
    const cfg = { ctx: a.ctx, threads: a.threads, gpuLayers: a.gpuLayers, tokens: a.tokens, text: gemma3Turn(a.prompt) };
    const run = page.evaluate(c => window.benchWllama(c), cfg);
    const timeout = new Promise((_, rej) => setTimeout(() => rej(new Error(`no result within --timeout-s ${a.timeoutS}`)), a.timeoutS * 1000));
    res = await Promise.race([run, timeout]);
    res.chromium = chromiumVersion;
    res.adapter = adapter;
  } catch (e) {
    err = e;
  } finally {
    await ctx.close().catch(() => {});
    server.closeAllConnections();
    server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  if (err) fail(`the page failed: ${err.message}`);
  const t = res.timings || {};
  const record = {
    engine: 'wllama', model: 'gemma3-270m', load_s: +res.load_s.toFixed(2),
    decode_tok_s: t.predicted_per_second != null ? +t.predicted_per_second.toFixed(2) : null, text: res.text,
    commit: commit(), command: ['node', path.relative(ROOT, new URL(import.meta.url).pathname), ...process.argv.slice(2)].join(' '),
    date: new Date().toISOString(), wllama_version: a.version, model_file: path.basename(modelPath), prompt: a.prompt,
    tokens: a.tokens, download_s: res.download_s != null ? +res.download_s.toFixed(2) : null, reply_s: +res.reply_s.toFixed(2),
    prefill: t.prompt_n != null ? { tokens: t.prompt_n, ms: +t.prompt_ms.toFixed(1), tok_s: +t.prompt_per_second.toFixed(2) } : null,
    decoded_tokens: t.predicted_n ?? null, decode_ms_per_token: t.predicted_per_token_ms != null ? +t.predicted_per_token_ms.toFixed(1) : null,
    finish_reason: res.finish_reason, threads: res.threads, multithread: res.multithread, n_gpu_layers: a.gpuLayers,
    n_ctx: res.n_ctx, cross_origin_isolated: res.cross_origin_isolated, chromium: res.chromium, webgpu_adapter: res.adapter,
    host: { cpus: os.cpus().length, load_avg_at_end: os.loadavg().map(x => +x.toFixed(2)) }, wllama_log: res.log,
  };
  if (record.decode_tok_s === null) log('wllama returned no timings: decode_tok_s is null; reply_s is the whole reply');
  const json = JSON.stringify(record, null, 1);
  console.log(json);
  if (a.out) {
    let list = [];
    if (fs.existsSync(a.out)) {
      try { const old = JSON.parse(fs.readFileSync(a.out, 'utf8')); list = Array.isArray(old) ? old : [old]; } catch { fail(`${a.out} is not JSON: not overwriting it`); }
    }
    list.push(record);
    fs.mkdirSync(path.dirname(a.out), { recursive: true });
    fs.writeFileSync(a.out, JSON.stringify(list, null, 1) + '\n');
    log(`appended to ${a.out}`);
  }
}

main().then(() => process.exit(0), e => fail(e.stack || String(e)));
