// The sum of mix_rows.wgsl's split partials: out[i] = SCALE * sum_s part[s * N + i], the slices added in order.
// Constants: N (positions x dims), SLICES, SCALE, WG, GRID_X (workgroups along x; more wrap into y).
@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid;
  if (i >= N) {
    return;
  }
  var s = 0.0;
  for (var k = 0u; k < SLICES; k++) {
    s += part[k * N + i];
  }
  out[i] = SCALE * s;
}
