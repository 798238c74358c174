// The second half of a split-K matrix-matrix product (matmul.wgsl with KSPLIT > 1):
//   Y[t * OUT_STRIDE + ROW0 + r] (+)= SCALE * sum_{s < KSPLIT} P[(s * N_TOK + t) * ROWS + r]
// for the Step uniform's tokens t < n_tokens (at most N_TOK) and rows r < ROWS. One lane per output; the
// splits are added in order, so results are the same run to run. Constants: KSPLIT, ROWS, ROW0, N_TOK,
// OUT_STRIDE, ACC, SCALE, WG, GRID_X (workgroups along x; more wrap into y).
@group(0) @binding(0) var<storage, read> P: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<uniform> step: Step;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid;
  let t = i / ROWS;
  let r = i % ROWS;
  if (t >= min(N_TOK, step.n_tokens)) {
    return;
  }
  var s = 0.0;
  for (var k = 0u; k < KSPLIT; k++) {
    s += P[(k * N_TOK + t) * ROWS + r];
  }
  let o = t * OUT_STRIDE + ROW0 + r;
  var y = SCALE * s;
  if (ACC) {
    y += Y[o];
  }
  Y[o] = y;
}
