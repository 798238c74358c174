// Logit soft-capping in place: x = CAP * tanh(x / CAP) over TOTAL f32 elements (Gemma 4's final logits,
// CAP = 30). tanh is written with exp on a clamped argument, like gelu_tanh in common.wgsl: some backends
// build tanh from exp without clamping and return NaN for large |x|. At |u| = 15, tanh is 1 to f32 precision.
// Constants: TOTAL, CAP, WG.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid;
  if (i < TOTAL) {
    let u = clamp(x[i] / CAP, -15.0, 15.0);
    x[i] = CAP * (1.0 - 2.0 / (exp(2.0 * u) + 1.0));
  }
}
