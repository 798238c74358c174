// Text-to-speech speed in headless Chromium: the peer a user would pick instead of rullama-py, kokoro-js 1.2.1
// (transformers.js + onnxruntime-web), on the real Kokoro-82M int8 weights, offline, timed on the same texts and
// voice (tools/bench_tts_texts.json: a ~5 s sentence and a ~30 s paragraph, af_heart) in one browser run, and
// a marked hook (benchRullamaTts below) where rullama-py's own TTS joins the same browser session.
//
//     node tools/bench_tts_browser.mjs [--backends wasm,webgpu] [--repeat 2] [--onnx kokoro-v1.0.int8.onnx]
//         [--kokoro-config config.json] [--threads N] [--timeout-s 600] [--out test-artifacts/bench_tts]
//
// On a 2-core host with no GPU (wasm on one thread; WebGPU on SwiftShader, where one sentence takes minutes and
// the paragraph runs into --timeout-s, which is recorded as that backend's error) a default run takes ~30 min.
// There the webgpu EP's audio is not wasm's: the short text came out 5.47 s long instead of 4.80 s, with a
// log-spectrogram correlation of 0.63 to native onnxruntime's audio for the same ids, where wasm's is 0.93 (as
// close as two neighbouring style rows are to each other); so listen before trusting a webgpu figure.
//
// What it sets up on demand (all under the git-ignored .bench/, never in web/package.json):
// - .bench/kokoro-js/node_modules: `npm install --ignore-scripts kokoro-js@1.2.1` (its voices/*.bin come with it).
// - A Python with the `onnx` package: the project's .venv if it has it, else a scratch .bench/venv.
// - .bench/kokoro-js/models/onnx-community/Kokoro-82M-v1.0-ONNX: the repo kokoro-js asks transformers.js for,
//   made by tools/bench_tts_kokoro_hub.py from the int8 ONNX (kokoro-onnx's export, two value names changed:
//   see there) and Kokoro's config.json.
// The int8 ONNX: --onnx, else the setup's copy (rullama_py.assets: $RULLAMA_CACHE or ~/.cache/rullama). Kokoro's
// config.json: --kokoro-config, else the setup's copy, else the one inside PyPI kokoro-onnx (pip download).
//
// Offline: a localhost server serves the page, node_modules and the model repo (with COOP/COEP, so
// onnxruntime-web may use threads); transformers.js has remote models off. kokoro-js fetches voices from a
// fixed huggingface.co URL in the browser: that request is answered from the npm package's own voices/*.bin by
// the browser context's router, and every other request that leaves localhost is aborted and listed in the
// result (`offline.blocked`), so an empty list shows nothing was reached.
//
// Timing: per backend a fresh page loads the model (load_s), speaks the short text once untimed (warm-up), then
// each text --repeat times, timed. A text is spoken as kokoro-js's README does for more than a sentence: its
// TextSplitterStream + tts.stream(), one generate per sentence (one generate() on a whole paragraph truncates
// past 510 phonemes, ~28 s). rtf = audio seconds / wall seconds (G2P + tokenizer + model; > 1 is faster than
// real time); the model's own share is model_s. The first timed run of each text is saved as
// <out>/kokoro-js-<backend>-<text>.wav (kokoro-js's own float WAV). Prints the result as JSON on stdout (progress
// goes to stderr) and writes <out>/result.json.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';

const here = path.dirname(new URL(import.meta.url).pathname);
const ROOT = path.resolve(here, '..');
const BENCH = path.join(ROOT, '.bench');
const KJS = path.join(BENCH, 'kokoro-js');
const MODELS = path.join(KJS, 'models');
const KOKORO_JS_VERSION = '1.2.1';
const KOKORO_ONNX_WHEEL = 'kokoro-onnx==0.6.1'; // carries Kokoro's config.json (vocab + hyper-parameters)
const ONNX_PACKAGE = 'onnx==1.23.2';
const ONNX_NAME = 'kokoro-v1.0.int8.onnx';
const VOICE_URL = /^https:\/\/huggingface\.co\/onnx-community\/Kokoro-82M-v1\.0-ONNX\/resolve\/main\/voices\/([A-Za-z0-9_]+)\.bin$/;

const LOCAL = /^https?:\/\/(127\.0\.0\.1|localhost|\[::1\])(:\d+)?\//;
const t0 = Date.now();
const log = (...a) => console.error(`[${((Date.now() - t0) / 1000).toFixed(1)} s]`, ...a);

// ---- rullama-py hook ---------------------------------------------------------------------------------------
// HOOK FOR rullama-py's OWN TTS (a teammate fills this in once the Kokoro model runs in the web app).
// Called once, after kokoro-js, in the same Chromium (a fresh page of its own context; the same router, so the
// same offline rule holds). `texts` is tools/bench_tts_texts.json: {voice, speed, texts: {short, long}};
// `phonemes` the phonemes kokoro-js spoke for each text (for a same-input comparison, if the G2P differs).
// `opts`: {log, phonemes, repeat, timeoutS} (timeoutS: the limit for one call, as for kokoro-js).
// Return null to leave it out, or {backend, load_s, runs: {short: [{wall_s, audio_s, ...}], long: [...]}} with
// the same warm-up rule (one untimed run of the short text first); summary() below turns runs into rtf.
async function benchRullamaTts(page, texts, opts) { // eslint-disable-line no-unused-vars
  return null;
}
// -------------------------------------------------------------------------------------------------------------

function parseArgs(argv) {
  const a = { backends: ['wasm', 'webgpu'], repeat: 2, onnx: null, kokoroConfig: null, threads: null,
    timeoutS: 600, out: path.join(ROOT, 'test-artifacts', 'bench_tts') };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => { if (i + 1 >= argv.length) throw new Error(`${k} needs a value`); return argv[++i]; };
    if (k === '--backends') a.backends = v().split(',').filter(Boolean);
    else if (k === '--repeat') a.repeat = Number(v());
    else if (k === '--onnx') a.onnx = path.resolve(v());
    else if (k === '--kokoro-config') a.kokoroConfig = path.resolve(v());
    else if (k === '--threads') a.threads = Number(v());
    else if (k === '--timeout-s') a.timeoutS = Number(v());
    else if (k === '--out') a.out = path.resolve(v());
    else if (k === '-h' || k === '--help') {
      console.log(fs.readFileSync(new URL(import.meta.url), 'utf8').split('\nimport ')[0]);
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  for (const b of a.backends) if (!['wasm', 'webgpu'].includes(b)) throw new Error(`backend ${b}: wasm or webgpu`);
  if (!(a.repeat >= 1)) throw new Error('--repeat must be at least 1');
  return a;
}

const run = (cmd, args, opts = {}) => {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${(r.stderr || r.stdout || r.error || '').toString().slice(-2000)}`);
  return r.stdout;
};

const pkgVersion = dir => { try { return JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version; } catch { return null; } };

// kokoro-js and its dependencies in .bench/kokoro-js (no install scripts: onnxruntime-node's and sharp's native
// downloads are not needed in a browser).
function ensureKokoroJs() {
  const nm = path.join(KJS, 'node_modules');
  if (pkgVersion(path.join(nm, 'kokoro-js')) !== KOKORO_JS_VERSION) {
    fs.mkdirSync(KJS, { recursive: true });
    fs.writeFileSync(path.join(KJS, 'package.json'), JSON.stringify({ private: true, description: 'scratch install for tools/bench_tts_browser.mjs' }, null, 1));
    log(`npm install --ignore-scripts kokoro-js@${KOKORO_JS_VERSION} in ${path.relative(ROOT, KJS)}`);
    run('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', `kokoro-js@${KOKORO_JS_VERSION}`], { cwd: KJS, stdio: ['ignore', 'pipe', 'pipe'] });
  }
  const versions = {};
  for (const p of ['kokoro-js', '@huggingface/transformers', 'onnxruntime-web', 'onnxruntime-common', 'phonemizer']) versions[p] = pkgVersion(path.join(nm, p));
  return versions;
}

function hasOnnx(python) {
  return fs.existsSync(python) && spawnSync(python, ['-c', 'import onnx'], { stdio: 'ignore' }).status === 0;
}

// A Python with `onnx`: the project's .venv when it has it (the `convert` extra), else a scratch venv.
function ensurePython() {
  const project = path.join(ROOT, '.venv', 'bin', 'python');
  if (hasOnnx(project)) return project;
  const scratch = path.join(BENCH, 'venv', 'bin', 'python');
  if (!hasOnnx(scratch)) {
    log(`making ${path.relative(ROOT, path.dirname(path.dirname(scratch)))} with ${ONNX_PACKAGE}`);
    run('python3', ['-m', 'venv', path.join(BENCH, 'venv')]);
    run(scratch, ['-m', 'pip', 'install', '--quiet', ONNX_PACKAGE]);
  }
  return scratch;
}

function cacheDir() {
  const env = process.env.RULLAMA_CACHE;
  return env ? path.resolve(env.replace(/^~(?=$|\/)/, os.homedir())) : path.join(os.homedir(), '.cache', 'rullama');
}

// The setup's path for an asset, asked of rullama_py.assets (a teammate is adding the Kokoro files there):
// the first of `functions` it has, or null.
function assetPath(python, functions) {
  const code = `import sys\nsys.path.insert(0, ${JSON.stringify(path.join(ROOT, 'src'))})\ntry:\n from rullama_py import assets\nexcept Exception:\n raise SystemExit(0)\n` +
    `for f in ${JSON.stringify(functions)}:\n if hasattr(assets, f):\n  print(getattr(assets, f)())\n  break\n`;
  const r = spawnSync(python, ['-c', code], { encoding: 'utf8' });
  const p = r.status === 0 ? r.stdout.trim() : '';
  return p && fs.existsSync(p) ? p : null;
}

function resolveInputs(args, python) {
  const projectPython = fs.existsSync(path.join(ROOT, '.venv', 'bin', 'python')) ? path.join(ROOT, '.venv', 'bin', 'python') : python;
  const onnx = args.onnx || assetPath(projectPython, ['kokoro_onnx_path', 'kokoro_model_path'])
    || [path.join(cacheDir(), ONNX_NAME)].find(p => fs.existsSync(p));
  if (!onnx || !fs.existsSync(onnx)) {
    throw new Error(`${ONNX_NAME} not found in ${cacheDir()}: run the setup (python -m rullama_py.assets) or pass --onnx PATH`);
  }
  let config = args.kokoroConfig || assetPath(projectPython, ['kokoro_config_path']);
  if (!config) {
    const dl = path.join(BENCH, 'kokoro-onnx');
    config = path.join(dl, 'config.json');
    if (!fs.existsSync(config)) {
      log(`pip download ${KOKORO_ONNX_WHEEL} for Kokoro's config.json`);
      fs.mkdirSync(dl, { recursive: true });
      run(python, ['-m', 'pip', 'download', '--quiet', '--no-deps', '--only-binary=:all:', '-d', dl, KOKORO_ONNX_WHEEL]);
      const wheel = fs.readdirSync(dl).find(f => f.startsWith('kokoro_onnx-') && f.endsWith('.whl'));
      run(python, ['-c', 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("kokoro_onnx/config.json"))',
        path.join(dl, wheel), config]);
    }
  }
  return { onnx, config };
}

const MIME = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.json': 'application/json', '.wasm': 'application/wasm', '.onnx': 'application/octet-stream', '.bin': 'application/octet-stream' };

// Static files for the page: / (the page), /bench/ (its stub module), /node_modules/, /models/.
function serve() {
  const roots = { '/node_modules/': path.join(KJS, 'node_modules'), '/models/': MODELS };
  const requests = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const p = decodeURIComponent(url.pathname);
    const headers = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp',
      'Cross-Origin-Resource-Policy': 'same-origin', 'Cache-Control': 'no-store' };
    let file = null;
    if (p === '/' || p === '/index.html') file = path.join(here, 'bench_tts_kokoro_js.html');
    else if (p === '/bench/empty-module.js') {
      res.writeHead(200, { ...headers, 'Content-Type': 'text/javascript' });
      res.end('export default {};\n'); // what a bundler makes of the "browser": {"path": false, ...} entries
      return;
    } else {
      for (const [prefix, dir] of Object.entries(roots)) {
        if (p.startsWith(prefix)) {
          const f = path.resolve(dir, '.' + p.slice(prefix.length - 1));
          if (f.startsWith(dir + path.sep)) file = f;
        }
      }
    }
    requests.push(p);
    if (!file || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404, headers);
      res.end('not found');
      return;
    }
    res.writeHead(200, { ...headers, 'Content-Type': MIME[path.extname(file)] || 'application/octet-stream',
      'Content-Length': fs.statSync(file).size });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise(resolve => server.listen(0, '127.0.0.1', () => resolve({ server, requests,
    origin: `http://127.0.0.1:${server.address().port}` })));
}

// The voicepack kokoro-js gets (its npm package's own file), with its sha256 to compare with the setup's copy.
function voiceRecord(voice) {
  const file = path.join(KJS, 'node_modules', 'kokoro-js', 'voices', `${voice}.bin`);
  return { name: voice, file: path.relative(ROOT, file), sha256: crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex') };
}

function withTimeout(promise, seconds, what) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer after ${seconds} s`)), seconds * 1000);
  })]).finally(() => clearTimeout(timer));
}

const median = xs => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };

// rtf from timed runs: audio seconds over the median wall seconds (and over the best run's).
function summary(runs) {
  if (!runs || !runs.length) return null;
  const wall = median(runs.map(r => r.wall_s));
  const out = { audio_s: runs[0].audio_s, wall_s_median: wall, wall_s_min: Math.min(...runs.map(r => r.wall_s)),
    rtf: runs[0].audio_s / wall, rtf_best: runs[0].audio_s / Math.min(...runs.map(r => r.wall_s)), runs: runs.length };
  if (runs[0].model_s != null) {
    out.model_s_median = median(runs.map(r => r.model_s));
    out.g2p_s_median = median(runs.map(r => r.g2p_s));
    out.rtf_model_only = runs[0].audio_s / out.model_s_median;
  }
  return out;
}

async function benchKokoroJs(ctx, origin, backend, texts, args) {
  const page = await ctx.newPage();
  const consoleLines = [];
  page.on('console', m => { if (['error', 'warning'].includes(m.type()) && consoleLines.length < 40) consoleLines.push(`${m.type()}: ${m.text().slice(0, 400)}`); });
  page.on('pageerror', e => consoleLines.push(`pageerror: ${e.message.slice(0, 400)}`));
  const res = { backend, console: consoleLines };
  try {
    await page.goto(origin + '/');
    await page.waitForFunction(() => window.kokoroBenchReady === true, null, { timeout: 120000 });
    res.info = await page.evaluate(() => window.kokoroBench.info());
    log(`${backend}: loading the model`);
    res.load = await withTimeout(page.evaluate(o => window.kokoroBench.load(o), { device: backend, threads: args.threads }), args.timeoutS, `${backend} load`);
    log(`${backend}: loaded in ${res.load.load_s.toFixed(1)} s (wasm threads ${res.load.numThreads})`);
    const speak = (text, wav) => withTimeout(page.evaluate(([t, o]) => window.kokoroBench.speak(t, o),
      [text, { voice: texts.voice, speed: texts.speed, wav }]), args.timeoutS, `${backend} speak`);
    // Warm-up: one untimed sentence (session start-up, the voice's first fetch, espeak's start-up, first-run
    // allocations). The first timed run of the long text is no slower than later ones (checked: wasm 190 s vs
    // 170 s for an untimed one before it), so one warm-up serves both texts.
    const w = await speak(texts.texts.short, false);
    res.warmup = { wall_s: w.wall_s, audio_s: w.audio_s };
    log(`${backend}: warm-up ${w.wall_s.toFixed(2)} s for ${w.audio_s.toFixed(2)} s of audio`);
    res.runs = {};
    for (const [name, text] of Object.entries(texts.texts)) {
      res.runs[name] = [];
      for (let i = 0; i < args.repeat; i++) {
        const r = await speak(text, i === 0);
        if (r.wav_b64) {
          const file = path.join(args.out, `kokoro-js-${backend}-${name}.wav`);
          fs.writeFileSync(file, Buffer.from(r.wav_b64, 'base64'));
          delete r.wav_b64;
          res.wav = { ...res.wav, [name]: path.relative(ROOT, file) };
        }
        if (i > 0) { delete r.ids; delete r.phonemes; } // the same for every run of a text
        res.runs[name].push(r);
        log(`${backend} ${name}: ${r.wall_s.toFixed(2)} s (model ${r.model_s.toFixed(2)} s) for ${r.audio_s.toFixed(2)} s of audio, ${r.sentences} sentence(s) of ${r.n_ids.join(', ')} ids`);
      }
    }
  } catch (e) {
    res.error = String(e && e.message || e).slice(0, 2000);
    log(`${backend}: ${res.error.split('\n')[0]}`);
  }
  if (res.runs) res.summary = Object.fromEntries(Object.entries(res.runs).map(([k, v]) => [k, summary(v)]));
  await page.close().catch(() => {});
  return res;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const texts = JSON.parse(fs.readFileSync(path.join(here, 'bench_tts_texts.json'), 'utf8'));
  fs.mkdirSync(args.out, { recursive: true });
  const require = createRequire(path.join(ROOT, 'web', 'package.json'));
  let chromium;
  try { ({ chromium } = require('playwright-core')); } catch { throw new Error('web/node_modules/playwright-core is missing: run tools/setup.sh'); }

  const packages = ensureKokoroJs();
  const python = ensurePython();
  const inputs = resolveInputs(args, python);
  log(`model repo from ${inputs.onnx} and ${inputs.config}`);
  const hub = JSON.parse(run(python, [path.join(here, 'bench_tts_kokoro_hub.py'), '--onnx', inputs.onnx,
    '--kokoro-config', inputs.config, '--out', MODELS]).trim().split('\n').pop());

  const { server, requests, origin } = await serve();
  const offline = { served_from_npm_voices: [], blocked: [] };
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'] });
  const newContext = async () => {
    const ctx = await browser.newContext();
    await ctx.route('**/*', async route => {
      const url = route.request().url();
      if (LOCAL.test(url)) return route.continue(); // this server, and any the rullama-py hook starts
      const voice = VOICE_URL.exec(url);
      const file = voice && path.join(KJS, 'node_modules', 'kokoro-js', 'voices', `${voice[1]}.bin`);
      if (file && fs.existsSync(file)) {
        offline.served_from_npm_voices.push(url);
        return route.fulfill({ status: 200, body: fs.readFileSync(file), headers: { 'Content-Type': 'application/octet-stream',
          'Access-Control-Allow-Origin': '*', 'Cross-Origin-Resource-Policy': 'cross-origin' } });
      }
      offline.blocked.push(url);
      return route.abort('blockedbyclient');
    });
    return ctx;
  };

  const result = {
    what: 'kokoro-js (transformers.js + onnxruntime-web) in headless Chromium, offline, real Kokoro-82M int8 weights',
    definitions: { rtf: 'audio seconds / wall seconds to speak the text (TextSplitterStream + tts.stream: one generate per sentence), median of the timed runs after a warm-up; > 1 is faster than real time',
      rtf_model_only: 'audio seconds / seconds in generate_from_ids (style row + the ONNX session run), i.e. without G2P and tokenizer' },
    texts, chromium: browser.version(),
    // The load average says how much of the CPU others were using: the timings are only as steady as it.
    host: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, memory_gib: +(os.totalmem() / 2 ** 30).toFixed(1),
      loadavg_start: os.loadavg().map(x => +x.toFixed(2)) },
    packages, model: hub, voice: voiceRecord(texts.voice), repeat: args.repeat, kokoro_js: {},
  };
  try {
    for (const backend of args.backends) {
      const ctx = await newContext();
      result.kokoro_js[backend] = await benchKokoroJs(ctx, origin, backend, texts, args);
      await ctx.close().catch(() => {});
    }
    const phonemes = Object.fromEntries(Object.keys(texts.texts).map(k => [k,
      Object.values(result.kokoro_js).map(r => r.runs?.[k]?.[0]?.phonemes).find(Boolean) ?? null]));  // per sentence
    const ctx = await newContext();
    const page = await ctx.newPage();
    try {
      result.rullama_py = await benchRullamaTts(page, texts, { log, phonemes, repeat: args.repeat, timeoutS: args.timeoutS });
      if (result.rullama_py?.runs) result.rullama_py.summary = Object.fromEntries(Object.entries(result.rullama_py.runs).map(([k, v]) => [k, summary(v)]));
    } catch (e) {
      result.rullama_py = { error: String(e && e.message || e).slice(0, 2000) };
    }
    await ctx.close().catch(() => {});
  } finally {
    await browser.close().catch(() => {});
    server.close();
  }
  result.host.loadavg_end = os.loadavg().map(x => +x.toFixed(2));
  result.offline = { ...offline, localhost_requests: requests.length };
  result.seconds = (Date.now() - t0) / 1000;
  fs.writeFileSync(path.join(args.out, 'result.json'), JSON.stringify(result, null, 1));
  console.log(JSON.stringify(result, null, 1));
}

main().catch(e => { console.error(e && e.stack || e); process.exit(1); });
