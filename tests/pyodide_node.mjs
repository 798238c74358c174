// Runs tests/pyodide_runner.py inside Pyodide 0.27.7 in Node, with WebGPU from npm `webgpu` (Dawn) over
// Chromium's SwiftShader Vulkan ICD (the caller sets VK_ICD_FILENAMES). Installs numpy and Pillow from the Pyodide
// distribution (the audio tests load scipy themselves, through rullama_py.media.load_resampler) and the wheels
// in web/dist/wheels with micropip (offline, deps=False), copies tests/ into Pyodide's file system, runs the tests and prints one JSON line prefixed RESULTS: at the end.
// Usage: node tests/pyodide_node.mjs [test-id ...]
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const web = path.join(root, 'web');
const require = createRequire(path.join(web, 'package.json'));
const { loadPyodide } = require('pyodide');
const { create, globals } = require('webgpu');

const py = await loadPyodide({ indexURL: path.join(web, 'node_modules/pyodide') + '/', stdout: s => console.log(s), stderr: s => console.error(s) });
// navigator.gpu only after loadPyodide: a `navigator` global without userAgent breaks Pyodide's start-up.
Object.assign(globalThis, globals);
Object.defineProperty(globalThis, 'navigator', { value: { gpu: create([]) }, configurable: true, writable: true });
await py.loadPackage(['numpy', 'pillow', 'micropip'], { messageCallback: () => {} });

const wheelDir = path.join(web, 'dist/wheels');
const wheels = fs.readdirSync(wheelDir).filter(f => f.endsWith('.whl'));
py.FS.mkdirTree('/wheels');
for (const w of wheels) py.FS.writeFile('/wheels/' + w, fs.readFileSync(path.join(wheelDir, w)));
function copyTree(src, dst) {
  py.FS.mkdirTree(dst);
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    if (e.name === '__pycache__' || e.name === 'fixtures') continue;
    if (e.isDirectory()) copyTree(path.join(src, e.name), dst + '/' + e.name);
    else if (/\.(py|json|npz)$/.test(e.name)) py.FS.writeFile(dst + '/' + e.name, fs.readFileSync(path.join(src, e.name)));
  }
}
copyTree(path.join(root, 'tests'), '/home/pyodide/tests');
// Of tests/fixtures (mostly models the Pyodide tests do not read), only the images of tests/test_media.py,
// the WAV files of tests/test_audio_media.py and the phonemes of tests/test_g2p.py.
function copyFiles(src, dst) {
  py.FS.mkdirTree(dst);
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    if (e.isDirectory()) copyFiles(path.join(src, e.name), dst + '/' + e.name);
    else py.FS.writeFile(dst + '/' + e.name, fs.readFileSync(path.join(src, e.name)));
  }
}
copyFiles(path.join(root, 'tests/fixtures/images'), '/home/pyodide/tests/fixtures/images');
copyFiles(path.join(root, 'tests/fixtures/audio'), '/home/pyodide/tests/fixtures/audio');
// Speech's text to phonemes (tests/test_g2p.py): its goldens, and the espeak-ng that web/worker.js gives Python
// in the app (self.rullamaEspeakIpa over npm phonemizer), here from web/node_modules. Loaded on the first call,
// as in the app (its Emscripten start-up installs process-wide handlers the other tests need not carry).
copyFiles(path.join(root, 'tests/fixtures/g2p'), '/home/pyodide/tests/fixtures/g2p');
globalThis.rullamaEspeakIpa = async (texts, voice) => {
  const { phonemize } = require('phonemizer');
  const out = [];
  for (const text of texts) out.push(await phonemize(text, voice));
  return out;
};
py.globals.set('WHEELS', wheels.map(w => 'emfs:/wheels/' + w));
py.globals.set('ONLY', process.argv.slice(2));

let out;
try {
  out = await py.runPythonAsync(`
import json, sys, micropip
await micropip.install(list(WHEELS), deps=False)
sys.path.insert(0, "/home/pyodide/tests")
from pathlib import Path
import pyodide_runner
from rullama_py import gpu

async def device():
    return await gpu.default_device()

async def device_fallback():
    return await gpu.fallback_device()

d = await gpu.default_device()
print("pyodide: adapter", d.info, "features", sorted(d.features), flush=True)
res = await pyodide_runner.run({"device": device, "device_fallback": device_fallback}, Path("/home/pyodide/tests"), set(ONLY) or None)
json.dumps(res)
`);
} catch (e) {
  // Print the Python traceback only: Node's default report includes pages of minified Pyodide source.
  console.error('PYODIDE ERROR: ' + (e && e.message ? e.message : String(e)));
  process.exit(1);
}
// Exit only once the line is written: over a pipe (pytest reads this one) Node writes asynchronously, and both
// console.log + process.exit and fs.writeSync (which writes what the 64 KiB pipe buffer takes and returns)
// cut the suite's line short.
process.stdout.write('RESULTS:' + out + '\n', () => process.exit(0));
