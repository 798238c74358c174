// Settings kept in localStorage: sampling, load options (with the memory modes), the last model (and mmproj) address, the open tab,
// and speech (voice, speed, speak replies, keep a copy of the speech model; speech.js sets those).

import { $ } from './state.js';

export const SAMPLING = ['temperature', 'top_k', 'top_p', 'min_p', 'repetition_penalty', 'seed', 'max_tokens', 'image_tokens'];
export const settings = JSON.parse(localStorage.getItem('rullama.settings') || '{}');

export const persistSettings = () => localStorage.setItem('rullama.settings', JSON.stringify(settings));

export function saveSettings() {
  for (const k of SAMPLING) settings[k] = $(k).value;
  settings.max_context = $('max-context').value;
  settings.prefill_chunk = $('prefill-chunk').value;
  settings.text_only = $('text-only').checked;
  settings.release_towers = $('release-towers').checked;
  settings.ple_on_gpu = $('ple-on-gpu').checked;
  settings.kv_cache_type = $('kv-cache-type').value;
  settings.keep_copy = $('keep-copy').checked;
  settings.url = $('model-url').value;
  settings.mmproj_url = $('mmproj-url').value;
  localStorage.setItem('rullama.settings', JSON.stringify(settings));
}

export function restoreSettings() {
  for (const k of SAMPLING) if (settings[k] !== undefined) $(k).value = settings[k];
  if (settings.max_context) $('max-context').value = settings.max_context;
  if (settings.prefill_chunk) $('prefill-chunk').value = settings.prefill_chunk;
  $('text-only').checked = !!settings.text_only;
  $('release-towers').checked = !!settings.release_towers;
  $('ple-on-gpu').checked = !!settings.ple_on_gpu;
  $('kv-cache-type').value = settings.kv_cache_type === 'q8_0' ? 'q8_0' : 'f16';
  $('keep-copy').checked = !!settings.keep_copy;
  if (settings.url) $('model-url').value = settings.url;
  if (settings.mmproj_url) $('mmproj-url').value = settings.mmproj_url;
}

export function samplingRequest() {
  const num = (id, int) => {
    const v = $(id).value.trim();
    if (v === '') return null;
    return int ? parseInt(v, 10) : parseFloat(v);
  };
  return {
    temperature: num('temperature') ?? 0.8,
    top_k: num('top_k', true) ?? 40,
    top_p: num('top_p') ?? 0.95,
    min_p: num('min_p') ?? 0.05,
    repetition_penalty: num('repetition_penalty') ?? 1,
    seed: num('seed', true),
    max_tokens: num('max_tokens', true) ?? 512,
    image_tokens: num('image_tokens', true) ?? 280,
    release_towers: $('release-towers').checked, // a memory mode, set with each request (see models.js)
  };
}
