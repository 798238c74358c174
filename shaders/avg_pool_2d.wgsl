// K x K average pooling of a vision tower's patch grid (Gemma 4: K = 3, after the last encoder layer):
//   out[oy * (pw / K) + ox, c] = MUL * sum_{dy, dx < K} x[(oy K + dy) * pw + ox K + dx, c],   MUL = scale / K^2
// x: f32 [patches, D], patches row-major (patch = py * pw + px); grid = (pw, ph), written by the host for each
// image, multiples of K. The graph is recorded once for a capacity: the dispatch covers OUT_ROWS output rows,
// and rows past (pw / K) * (ph / K), or whose block would reach past x's IN_ROWS rows, are not written.
// One thread per output value; the threads of a workgroup read consecutive columns of each patch row.
// Constants: D, K, IN_ROWS, OUT_ROWS, MUL, WG.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> grid: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid;
  let r = i / D;
  let c = i % D;
  let pw = grid[0];
  let ow = pw / K;
  if (r >= OUT_ROWS || ow == 0u || r >= ow * (grid[1] / K)) {
    return;
  }
  let first = (r / ow) * K * pw + (r % ow) * K;  // top-left patch of the block
  if (first + (K - 1u) * (pw + 1u) >= IN_ROWS) {
    return;
  }
  var s = 0.0;
  for (var dy = 0u; dy < K; dy++) {
    for (var dx = 0u; dx < K; dx++) {
      s += x[(first + dy * pw + dx) * D + c];
    }
  }
  out[i] = s * MUL;
}
