// Rows picked by an index, the alignment of Kokoro (en = d^T aln and asr = t_en aln, aln one-hot from the
// durations):
//   out[f * OUT_STRIDE + OUT_OFFSET + i] = table[min(index[f], TABLE_ROWS - 1) * TABLE_STRIDE + TABLE_OFFSET + i]
//                                               for f < n = min(step.n_tokens, ROWS), i < N
//   out[f * OUT_STRIDE + OUT_OFFSET + i] = 0    for n <= f < ROWS
// table: f32 [TABLE_ROWS, TABLE_STRIDE]; index: u32 [ROWS] (an index past the table reads its last row, never
// outside it); out: f32 [ROWS, OUT_STRIDE], columns outside [OUT_OFFSET, OUT_OFFSET + N) untouched.
// One thread per output value; neighbouring threads copy neighbouring columns.
// Constants: N, ROWS, TOTAL (= ROWS * N), TABLE_ROWS, TABLE_STRIDE, TABLE_OFFSET, OUT_STRIDE, OUT_OFFSET, WG.
@group(0) @binding(0) var<storage, read> table: array<f32>;
@group(0) @binding(1) var<storage, read> row_index: array<u32>;
@group(0) @binding(2) var<uniform> step: Step;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * nwg.x + wid.x) * WG + lid;
  if (e >= TOTAL) {
    return;
  }
  let f = e / N;
  let i = e % N;
  var v = 0.0;
  if (f < min(step.n_tokens, ROWS)) {
    v = table[min(row_index[f], TABLE_ROWS - 1u) * TABLE_STRIDE + TABLE_OFFSET + i];
  }
  out[f * OUT_STRIDE + OUT_OFFSET + i] = v;
}
