// `rullama bench` inside Pyodide: the browser's code path (Pyodide 0.27.7, rullama_py over navigator.gpu through
// rullama_py.webgpu_js, the model read as a File through sources.BlobSource) in Node, with npm `webgpu` (Dawn,
// Chrome's WebGPU) as navigator.gpu. On a machine with a real GPU this is the page's speed there, without a browser.
//
//   node tools/bench_pyodide.mjs MODEL.gguf [--prompt-tokens 128] [--gen-tokens 64] [--repeats 3] [--ctx 1024]
//        [--prefill-chunk N] [--depth 0[,1024,...]] [--record FILE] [--model-name NAME] [--commit HASH]
//        [--node-modules DIR] [--wheels DIR] [--dawn TOGGLE ...] [--ple-on-gpu]
//
// --ple-on-gpu loads Gemma 4 E2B/E4B with its per-layer-embedding table on the GPU (Engine.load's ple_on_gpu,
// as `rullama bench --ple-on-gpu`), streamed into GPU buffers a piece at a time.
// The measurement is rullama_py.bench.measure, the one `rullama bench` makes natively: the same token ids, warm-up
// and timed spans (see that module). One JSON record per depth is printed, {"engine": "rullama-py-pyodide",
// "model", "prefill_tok_s", "decode_tok_s", "context", "commit", "command", "device", "dispatches_per_token", ...};
// --record appends them to a JSON list file (rullama_py.bench.append_records, through a Node file-system mount).
//
// Where things come from: `pyodide` and `webgpu` in --node-modules (default web/node_modules), the wheels
// rullama_py, gguf and pyyaml in --wheels (default web/dist/wheels: run tools/pyodide_dist.py first, which also
// builds rullama_py's wheel from the working tree), numpy and micropip from Pyodide's folder. The commit is
// --commit, else `git rev-parse --short HEAD` here, else "unknown". --dawn passes a Dawn toggle to
// webgpu's create() (e.g. --dawn backend=vulkan). Locally on a software GPU:
//   VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json node tools/bench_pyodide.mjs MODEL.gguf
// tools/pack_node_bundle.sh packs all of this for a machine without Node or npm.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');

const USAGE = 'usage: node tools/bench_pyodide.mjs MODEL.gguf [--prompt-tokens N] [--gen-tokens N] [--repeats N] '
  + '[--ctx N] [--prefill-chunk N] [--depth N[,N...]] [--record FILE] [--model-name NAME] [--commit HASH] '
  + '[--node-modules DIR] [--wheels DIR] [--dawn TOGGLE ...] [--ple-on-gpu]';

function fail(sentence) {
  console.error(`bench_pyodide: ${sentence}`);
  process.exit(2);
}

// [default, least]; --prefill-chunk's default (null) is the device's (models.gemma.default_prefill_chunk), as natively.
const COUNTS = { 'prompt-tokens': [128, 1], 'gen-tokens': [64, 1], repeats: [3, 1], ctx: [1024, 1], 'prefill-chunk': [null, 1] };
const TEXTS = ['record', 'model-name', 'commit', 'node-modules', 'wheels', 'depth'];
const FLAGS = ['ple-on-gpu'];

function parseArgs(argv) {
  const opts = { dawn: [], 'ple-on-gpu': false };
  for (const [k, [d]] of Object.entries(COUNTS)) opts[k] = d;
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') { console.log(USAGE); process.exit(0); }
    if (!a.startsWith('--')) { positional.push(a); continue; }
    let [name, value] = a.slice(2).split(/=(.*)/s, 2);
    if (FLAGS.includes(name) && value === undefined) { opts[name] = true; continue; }
    if (!(name in COUNTS) && !TEXTS.includes(name) && name !== 'dawn') fail(`unknown option --${name}.\n${USAGE}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) fail(`--${name} needs a value.`);
      value = argv[++i];
    }
    if (name in COUNTS) {
      const n = Number(value);
      if (!Number.isInteger(n) || n < COUNTS[name][1]) fail(`--${name} ${value} is not a whole number of ${COUNTS[name][1]} or more.`);
      opts[name] = n;
    } else if (name === 'dawn') opts.dawn.push(value);
    else opts[name] = value;
  }
  if (positional.length !== 1) fail(`give one model file (a .gguf).\n${USAGE}`);
  opts.model = positional[0];
  const depths = String(opts.depth ?? '0').split(',').map(s => s.trim());
  opts.depths = depths.map(s => {
    const n = Number(s);
    if (s === '' || !Number.isInteger(n) || n < 0) fail(`--depth ${opts.depth}: give whole numbers of 0 or more, separated by commas.`);
    return n;
  });
  return opts;
}

function commitOf(opts) {
  if (opts.commit) return opts.commit;
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() || 'unknown';
  } catch {
    return 'unknown';
  }
}

// The record's command: the options that change what is measured (where the files came from and the commit's
// name are not among them, and would put this machine's folders into the record).
function measuredArgs(argv) {
  const out = [];
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].startsWith('--') ? argv[i].slice(2).split('=')[0] : null;
    if (['node-modules', 'wheels', 'commit'].includes(name)) {
      if (!argv[i].includes('=')) i++;
      continue;
    }
    out.push(argv[i]);
  }
  return out;
}

// A warning when the rullama_py wheel in web/dist/wheels is older than the sources it was built from.
function warnIfStale(wheel) {
  const built = fs.statSync(wheel).mtimeMs;
  const newer = [];
  const walk = dir => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) { if (e.name !== '__pycache__') walk(p); } else if (/\.(py|wgsl)$/.test(e.name) && fs.statSync(p).mtimeMs > built) newer.push(path.relative(root, p));
    }
  };
  for (const d of ['src/rullama_py', 'shaders']) if (fs.existsSync(path.join(root, d))) walk(path.join(root, d));
  if (newer.length) console.error(`bench_pyodide: warning: ${newer.length} source file(s) (${newer.slice(0, 3).join(', ')}${newer.length > 3 ? ', ...' : ''}) changed after ${path.relative(root, wheel)} was built: run tools/pyodide_dist.py to measure the working tree.`);
}

const shellWord = s => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`);

const opts = parseArgs(process.argv.slice(2));
let modelStat;
try {
  modelStat = fs.statSync(opts.model);
} catch {
  fail(`${opts.model}: no such file.`);
}
if (!modelStat.isFile()) fail(`${opts.model} is not a file.`);
const nodeModules = path.resolve(opts['node-modules'] || path.join(root, 'web/node_modules'));
const wheelDir = path.resolve(opts.wheels || path.join(root, 'web/dist/wheels'));
const WANTED_WHEELS = ['rullama_py', 'gguf', 'pyyaml'];
let wheels;
try {
  wheels = fs.readdirSync(wheelDir).filter(f => f.endsWith('.whl') && WANTED_WHEELS.includes(f.split('-')[0].toLowerCase()));
} catch {
  wheels = [];
}
for (const w of WANTED_WHEELS) {
  if (!wheels.some(f => f.split('-')[0].toLowerCase() === w)) fail(`no ${w} wheel in ${wheelDir}: run tools/pyodide_dist.py first (or give --wheels).`);
}
if (!opts.wheels) warnIfStale(path.join(wheelDir, wheels.find(f => f.startsWith('rullama_py-'))));
for (const p of ['pyodide/pyodide.mjs', 'webgpu/index.js']) {
  if (!fs.existsSync(path.join(nodeModules, p))) fail(`${path.join(nodeModules, p)} is missing: run npm ci in web/ (or give --node-modules).`);
}

const t0 = performance.now();
const { loadPyodide } = await import(pathToFileURL(path.join(nodeModules, 'pyodide/pyodide.mjs')).href);
const { create, globals } = await import(pathToFileURL(path.join(nodeModules, 'webgpu/index.js')).href);
const py = await loadPyodide({ indexURL: path.join(nodeModules, 'pyodide') + '/', stdout: s => console.error(s), stderr: s => console.error(s) });
// navigator.gpu only after loadPyodide: a `navigator` global without userAgent breaks Pyodide's start-up.
Object.assign(globalThis, globals);
Object.defineProperty(globalThis, 'navigator', { value: { gpu: create(opts.dawn) }, configurable: true, writable: true });
await py.loadPackage(['numpy', 'micropip'], { messageCallback: () => {} });
py.FS.mkdirTree('/wheels');
for (const w of wheels) py.FS.writeFile('/wheels/' + w, fs.readFileSync(path.join(wheelDir, w)));
// The record file's folder, mounted so that Python appends to it itself (rullama_py.bench.append_records).
let recordPath = null;
function fileOnDisk(p) {
  const fd = fs.openSync(p, 'r');
  const size = fs.fstatSync(fd).size;
  const read = async (a, b) => {  // sync reads: nothing else waits on this process's event loop
    const n = Math.max(0, Math.min(b, size) - a);
    const buf = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const bytesRead = fs.readSync(fd, buf, got, n - got, a + got);
      if (!bytesRead) break;
      got += bytesRead;
    }
    return buf.buffer.slice(buf.byteOffset, buf.byteOffset + got);
  };
  return { size, name: path.basename(p), slice: (a, b) => ({ arrayBuffer: () => read(a, b) }) };
}

if (opts.record) {
  const host = path.resolve(opts.record);
  if (!fs.existsSync(path.dirname(host))) fail(`${opts.record}: its folder does not exist.`);
  py.FS.mkdirTree('/bench_record');
  py.mountNodeFS('/bench_record', path.dirname(host));
  recordPath = '/bench_record/' + path.basename(host);
}
// The model as the page gets a file the user picked: sources.BlobSource reads a File through `size`, `name`
// and `slice(a, b).arrayBuffer()`. Node 20's fs.openAsBlob reports a file over 4 GiB with its size modulo 2^32
// (the 6.2 GB E2B file came out as 1.9 GB), so the model is an object with that same surface reading the
// file on disk lazily through a file descriptor.
py.globals.set('MODEL_FILE', fileOnDisk(opts.model));
const settings = {
  wheels: wheels.map(w => 'emfs:/wheels/' + w),
  ctx: opts.ctx, prefill_chunk: opts['prefill-chunk'], prompt_tokens: opts['prompt-tokens'], gen_tokens: opts['gen-tokens'],
  repeats: opts.repeats, depths: opts.depths, record: recordPath, ple_on_gpu: opts['ple-on-gpu'],
  model: opts['model-name'] || null,
  commit: commitOf(opts),
  command: ['node', path.relative(process.cwd(), process.argv[1]) || process.argv[1], ...measuredArgs(process.argv.slice(2))].map(shellWord).join(' '),
  start_seconds: (performance.now() - t0) / 1e3,
};
py.globals.set('SETTINGS', JSON.stringify(settings));

let out;
try {
  out = await py.runPythonAsync(`
import json, sys, time
import micropip
S = json.loads(SETTINGS)
await micropip.install(S["wheels"], deps=False)
from rullama_py import bench, gpu
from rullama_py.engine import Engine
from rullama_py.sampling import SamplerParams
from rullama_py.sources import BlobSource

async def main():
    for depth in S["depths"]:  # a sentence before any weight is read
        bench.check_settings(S["ctx"], prompt_tokens=S["prompt_tokens"], gen_tokens=S["gen_tokens"],
                             repeats=S["repeats"], depth=depth)
    dev = await gpu.default_device()
    print("bench_pyodide: adapter", json.dumps(dev.info), "features", sorted(dev.features), file=sys.stderr)
    src = BlobSource(MODEL_FILE)
    t0 = time.perf_counter()
    eng = await Engine.load(src, max_context=S["ctx"], prefill_chunk=S["prefill_chunk"],
                            params=SamplerParams(temperature=0.0), device=dev, ple_on_gpu=S["ple_on_gpu"])
    load_s = time.perf_counter() - t0
    model = S["model"] or bench.model_label(src.name)
    records = []
    for depth in S["depths"]:
        res = await bench.measure(eng, prompt_tokens=S["prompt_tokens"], gen_tokens=S["gen_tokens"],
                                  repeats=S["repeats"], depth=depth)
        res["load_seconds"] = round(load_s, 2)
        res["pyodide_start_seconds"] = round(S["start_seconds"], 2)
        records.append(bench.record(res, model=model, commit=S["commit"], command=S["command"]))
    if S["record"]:
        bench.append_records(S["record"], records)
    # Nothing left in flight when Node exits (a step decoded ahead): Dawn torn down under running GPU work
    # ended the process with a segmentation fault after the records were written.
    eng.settle()
    await dev.sync()
    return records

try:
    result = {"records": await main()}
except (ValueError, OSError, RuntimeError, LookupError) as e:  # our errors carry sentences
    result = {"error": f"{type(e).__name__}: {e}"}
json.dumps(result)
`);
} catch (e) {
  // The Python traceback only: Node's default report includes pages of minified Pyodide source.
  console.error('bench_pyodide: PYODIDE ERROR: ' + (e && e.message ? e.message : String(e)));
  process.exit(1);
}
const result = JSON.parse(out);
if (result.error) {
  console.error(`bench_pyodide: ${result.error}`);
  process.exit(1);
}
if (opts.record) console.error(`bench_pyodide: ${result.records.length} record(s) appended to ${opts.record}`);
// Exit once the output is written: over a pipe Node writes asynchronously (see tests/pyodide_node.mjs).
process.stdout.write(JSON.stringify(result.records, null, 1) + '\n', () => process.exit(0));
