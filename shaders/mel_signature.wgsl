// The timbre signature of a log-mel spectrogram (log_mel_frames.wgsl's output) and its loss against a goal (the target voice's), for
// the voice trainer (src/rullama_py/ops/mel.py):
//   active    = frames f < F with energy[f] > max_f energy[f] - THRESHOLD           (F = L / HOP + 1 real frames)
//   mean[m]   = sum_{f active} L[f, m] / |active|,     sig[m] = mean[m] - mean_m' mean[m']    (level-invariant)
//   loss      = mean_m (sig[m] - goal[m])^2
// written to signature[slot, :] and loss[slot] (slot from params: the population step's candidate).
// L: f32 [FRAMES, MELS]; energy: f32 [FRAMES]; step: Step, n_tokens = L samples; goal: f32 [MELS];
// params: SearchParams (only .slot is read here); signature: f32 [SLOTS, MELS]; loss: f32 [SLOTS].
// One workgroup; each reduction is a tree over WG lanes. Constants: HOP, MELS, FRAMES, THRESHOLD, WG (>= MELS).
struct SearchParams {
  seed: u32,
  counter: u32,
  slot: u32,
  step: f32,
}

@group(0) @binding(0) var<storage, read> logmel: array<f32>;
@group(0) @binding(1) var<storage, read> energy: array<f32>;
@group(0) @binding(2) var<uniform> step: Step;
@group(0) @binding(3) var<storage, read> goal: array<f32>;
@group(0) @binding(4) var<uniform> params: SearchParams;
@group(0) @binding(5) var<storage, read_write> signature: array<f32>;
@group(0) @binding(6) var<storage, read_write> loss: array<f32>;

var<workgroup> red: array<f32, WG>;

fn reduce_max(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      red[lid] = max(red[lid], red[lid + s]);
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn reduce_sum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      red[lid] = red[lid] + red[lid + s];
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  let frames = min(step.n_tokens / HOP + 1u, FRAMES);
  var top = -3.4e38;
  for (var f = lid; f < frames; f += WG) {
    top = max(top, energy[f]);
  }
  let floor_e = reduce_max(top, lid) - THRESHOLD;
  var count = 0.0;
  for (var f = lid; f < frames; f += WG) {
    count += select(0.0, 1.0, energy[f] > floor_e);
  }
  let n_active = max(reduce_sum(count, lid), 1.0);
  var band = 0.0;
  if (lid < MELS) {
    for (var f = 0u; f < frames; f++) {
      if (energy[f] > floor_e) {
        band += logmel[f * MELS + lid];
      }
    }
    band = band / n_active;
  }
  let centre = reduce_sum(band, lid) / f32(MELS);
  var d2 = 0.0;
  if (lid < MELS) {
    let sig = band - centre;
    signature[params.slot * MELS + lid] = sig;
    let d = sig - goal[lid];
    d2 = d * d;
  }
  let total = reduce_sum(d2, lid);
  if (lid == 0u) {
    loss[params.slot] = total / f32(MELS);
  }
}
