// x[r, c] = (x[r, c] - bias[c]) * scale[c] in place over rows of N (TOTAL values): the standardisation of the
// Gemma 4 vision tower's pooled features (v.std_bias, v.std_scale), in f32 like transformers, where subtracting
// the bias first cancels the large values that the sqrt(d) pooling scale produced. Constants: N, TOTAL, WG.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read> scale: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid;
  if (i < TOTAL) {
    let c = i % N;
    x[i] = (x[i] - bias[c]) * scale[c];
  }
}
