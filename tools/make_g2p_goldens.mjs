// Golden phonemes for src/rullama_py/g2p.py, made by kokoro-js itself (npm kokoro-js 1.2.1, which phonemizes
// with npm phonemizer 1.2.1: espeak-ng compiled to JavaScript).
//
//   mkdir /tmp/kjs && cd /tmp/kjs && npm install --ignore-scripts kokoro-js@1.2.1 phonemizer@1.2.1
//   node tools/make_g2p_goldens.mjs /tmp/kjs      # writes tests/fixtures/g2p/kokoro_js_phonemes.json
//
// Input: tests/fixtures/g2p/sentences.txt, one sentence per line. Output, for every line and both English voices
// (kokoro-js picks the espeak language from the voice's first letter: a -> "en-us", b -> "en"):
//   phonemes: [{text, "en-us", "en-gb"}]  what KokoroTTS.generate(text, {voice}) hands its tokenizer, i.e.
//             kokoro-js's phonemize(): normalisation, espeak between punctuation, Kokoro post-processing;
//   split:    {joiner: [sentences]}  kokoro-js's TextSplitterStream on all lines joined by " " and by "\n";
//   stream:   [{text, phonemes}]  what KokoroTTS.stream() yields for the lines joined by " " (en-us voice);
//   normalize: [{text, normalized}]  kokoro-js's normalize_text on every string of normalize_cases.json.
// kokoro-js does not export phonemize(), so the goldens go through its public API with a tokenizer that records
// its input (and a model stand-in for stream(), which never runs the network); no model weights are needed.
// Its text normalisation is not reachable alone: it is taken out of dist/kokoro.js (the function literal that
// phonemize() applies, with the number and money helpers before it) and evaluated as it stands.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const dir = process.argv[2];
if (!dir) {
  console.error('usage: node tools/make_g2p_goldens.mjs DIR   (DIR/node_modules has kokoro-js 1.2.1 and phonemizer 1.2.1)');
  process.exit(2);
}
const pkg = name => JSON.parse(fs.readFileSync(path.join(dir, 'node_modules', name, 'package.json'), 'utf8'));
const versions = { 'kokoro-js': pkg('kokoro-js').version, phonemizer: pkg('phonemizer').version };
if (versions['kokoro-js'] !== '1.2.1' || versions.phonemizer !== '1.2.1') {
  console.error('expected kokoro-js 1.2.1 and phonemizer 1.2.1, found', versions);
  process.exit(1);
}
// The nested copy kokoro-js would import must be that same phonemizer.
const nested = path.join(dir, 'node_modules/kokoro-js/node_modules/phonemizer');
if (fs.existsSync(nested)) {
  console.error('kokoro-js has its own phonemizer copy in', nested);
  process.exit(1);
}
const { KokoroTTS, TextSplitterStream } = await import(pathToFileURL(path.join(dir, 'node_modules/kokoro-js/dist/kokoro.js')).href);

const VOICES = { 'en-us': 'af_heart', 'en-gb': 'bf_emma' };
const fixtures = path.join(root, 'tests/fixtures/g2p');
const lines = fs.readFileSync(path.join(fixtures, 'sentences.txt'), 'utf8').split('\n').filter(l => l.length > 0);

// The tokenizer stand-in: remember the phonemes and return ids of the shape generate_from_ids reads.
let seen = null;
const tokenizer = text => {
  seen = text;
  return { input_ids: { dims: [1, [...text].length + 2] } };
};
const model = async () => ({ waveform: { data: new Float32Array(1) } });
const tts = new KokoroTTS(model, tokenizer);

async function phonemesOf(text, voice) {
  seen = null;
  await tts.generate(text, { voice });
  return seen;
}

const phonemes = [];
for (const text of lines) {
  const row = { text };
  for (const [lang, voice] of Object.entries(VOICES)) row[lang] = await phonemesOf(text, voice);
  phonemes.push(row);
}

function splitText(text) {
  const s = new TextSplitterStream();
  s.push(text);
  s.close();
  return [...s.sentences];
}
const split = { ' ': splitText(lines.join(' ')), '\n': splitText(lines.join('\n')) };

// stream() on a closed splitter (a plain string is never closed there, so its last sentence would wait forever).
const stream = [];
const splitter = new TextSplitterStream();
splitter.push(lines.join(' '));
splitter.close();
for await (const { text, phonemes: ps } of tts.stream(splitter, { voice: VOICES['en-us'] })) stream.push({ text, phonemes: ps });

// kokoro-js's normalize_text: in the minified bundle, `t&&(e=function(e){return e.replace(...)...trim()}(e))`
// inside phonemize, and its helpers (split_num, flip_money, point_num) from `function o(e)` up to the
// punctuation expression `const u=new RegExp`. Found by these anchors; a bundle without them stops here.
const source = fs.readFileSync(path.join(dir, 'node_modules/kokoro-js/dist/kokoro.js'), 'utf8');
const anchors = [source.indexOf('function o(e)'), source.indexOf('const u=new RegExp'),
  source.indexOf('t&&(e=function(e){'), source.indexOf('.trim()}(e))')];
if (anchors.some(i => i < 0) || source.indexOf('t&&(e=function(e){', anchors[2] + 1) >= 0) {
  console.error('kokoro-js dist/kokoro.js does not have the expected shape around normalize_text', anchors);
  process.exit(1);
}
const normalizeText = new Function(source.slice(anchors[0], anchors[1]) + '; return '
  + source.slice(anchors[2] + 't&&(e='.length, anchors[3] + '.trim()}'.length))();
const cases = JSON.parse(fs.readFileSync(path.join(fixtures, 'normalize_cases.json'), 'utf8'));
const normalize = cases.map(text => ({ text, normalized: normalizeText(text) }));
// The function taken out is the one phonemize applies: on every sentence, it and espeak give the goldens.
const { phonemize: espeakPhonemize } = await import(pathToFileURL(path.join(dir, 'node_modules/phonemizer/dist/phonemizer.js')).href);
for (const row of phonemes.slice(0, 3)) {
  const norm = normalizeText(row.text);
  if (!norm || (await espeakPhonemize(norm, 'en-us')).length === 0) {
    console.error('normalize_text taken out of kokoro-js gives nothing for', row.text);
    process.exit(1);
  }
}

const out = {
  made_by: 'tools/make_g2p_goldens.mjs',
  versions,
  voices: VOICES,
  phonemes,
  split,
  stream,
  normalize,
};
const file = path.join(fixtures, 'kokoro_js_phonemes.json');
fs.writeFileSync(file, JSON.stringify(out, null, 1) + '\n');
console.log(`wrote ${path.relative(root, file)}: ${phonemes.length} sentences x ${Object.keys(VOICES).length} voices, `
  + `${split[' '].length} split sentences, ${stream.length} streamed, ${normalize.length} normalised`);
