// One vector written into a column window of every row: out[r * OUT_STRIDE + OUT_OFFSET + i] = vec[VEC_OFFSET + i]
// for r < ROWS, i < N (Kokoro: the style vector next to the LSTM outputs in the duration encoder's 640-wide
// rows). Columns outside the window are untouched. One thread per value. Constants: N, ROWS, TOTAL (= ROWS * N),
// OUT_STRIDE, OUT_OFFSET, VEC_OFFSET, WG.
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * nwg.x + wid.x) * WG + lid;
  if (e < TOTAL) {
    out[(e / N) * OUT_STRIDE + OUT_OFFSET + e % N] = src[VEC_OFFSET + e % N];
  }
}
