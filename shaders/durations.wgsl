// Kokoro's duration head after its Linear 512 -> BINS (model.py, KModel.forward_with_tokens):
//   d[t] = max(1, round(sum_j sigmoid(logits[t, j]) / speed[0]))   for t < n = min(step.n_tokens, ROWS)
//   d[t] = 0                                                        for n <= t < ROWS
// logits: f32 [ROWS, BINS]; speed: f32 [1], read at run time; d: u32 [ROWS]. WGSL's round() takes ties to the
// even neighbour, as torch.round does. The sum runs over j in order, in f32; sigmoid from sigmoid_lib.wgsl.
// One thread per row. Constants: BINS, ROWS, WG.
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> speed: array<f32>;
@group(0) @binding(2) var<uniform> step: Step;
@group(0) @binding(3) var<storage, read_write> d: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let t = (wid.y * nwg.x + wid.x) * WG + lid;
  if (t >= ROWS) {
    return;
  }
  if (t >= min(step.n_tokens, ROWS)) {
    d[t] = 0u;
    return;
  }
  var s = 0.0;
  for (var j = 0u; j < BINS; j++) {
    s += sigmoid(logits[t * BINS + j]);
  }
  d[t] = u32(max(1.0, round(s / speed[0])));
}
