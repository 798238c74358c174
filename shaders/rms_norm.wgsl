// RMSNorm over the last axis of a [ROWS, N] f32 array, one workgroup per row:
//   y = x * rsqrt(mean(x^2) + EPS) * w          (Gemma 4, and Gemma 3 as llama.cpp stores it: +1 folded in)
//   y = x * rsqrt(mean(x^2) + EPS) * (1 + w)    (ADD_ONE: Gemma 3's reference convention, unfolded weights)
//   y = x * rsqrt(mean(x^2) + EPS)              (HAS_WEIGHT = false)
// The weight has N elements. Per-head norms (q/k norms) are the same op over [tokens * heads, head_dim].
// ACCUMULATE: y += (the normalised row) instead of y = ..., fusing a post-norm with its residual add.
// HAS_SCALE: the result is then multiplied by sc[0] (Gemma 4's layer_output_scale: y = (y + norm(x) * w) * s).
// Constants: N, EPS, HAS_WEIGHT, ADD_ONE, ACCUMULATE, HAS_SCALE, WG (workgroup size, a power of two), GRID_X and
// ROWS: more rows than a grid dimension holds (the vision tower's per-head norms: 10080 patches x 12 heads) wrap
// into y, row = wid.y * GRID_X + wid.x, and the padding workgroups past ROWS return; GRID_X = 0: no wrap.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> sc: array<f32>;  // HAS_SCALE only; any read-only buffer otherwise

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * GRID_X + wid.x;
  if (GRID_X > 0u && row >= ROWS) {
    return;  // the whole workgroup: uniform control flow
  }
  let base = row * N;
  var s = 0.0;
  for (var i = lid; i < N; i += WG) {
    let v = x[base + i];
    s += v * v;
  }
  partial[lid] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lid < stride) {
      partial[lid] += partial[lid + stride];
    }
    workgroupBarrier();
  }
  let scale = inverseSqrt(partial[0] / f32(N) + EPS);
  var post = 1.0;
  if (HAS_SCALE) {
    post = sc[0];
  }
  for (var i = lid; i < N; i += WG) {
    var v = x[base + i] * scale;
    if (HAS_WEIGHT) {
      let wi = w[i];
      v *= select(wi, 1.0 + wi, ADD_ONE);
    }
    if (ACCUMULATE) {
      v += y[base + i];
    }
    y[base + i] = v * post;
  }
}
