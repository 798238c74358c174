// RMSNorm over the last axis of a [ROWS, N] f32 array, one workgroup per row:
//   y = x * rsqrt(mean(x^2) + EPS) * w          (Gemma 4, and Gemma 3 as llama.cpp stores it: +1 folded in)
//   y = x * rsqrt(mean(x^2) + EPS) * (1 + w)    (ADD_ONE: Gemma 3's reference convention, unfolded weights)
//   y = x * rsqrt(mean(x^2) + EPS)              (HAS_WEIGHT = false)
// The weight has N elements. Per-head norms (q/k norms) are the same op over [tokens * heads, head_dim].
// ACCUMULATE: y += (the normalised row) instead of y = ..., fusing a post-norm with its residual add.
// HAS_SCALE: the result is then multiplied by sc[0] (Gemma 4's layer_output_scale: y = (y + norm(x) * w) * s).
// Entry `then_norm` goes on to norm the row it wrote, into z (below).
// Constants: N, EPS, HAS_WEIGHT, ADD_ONE, ACCUMULATE, HAS_SCALE, WG (workgroup size, a power of two), GRID_X and
// ROWS: more rows than a grid dimension holds (the vision tower's per-head norms: 10080 patches x 12 heads) wrap
// into y, row = wid.y * GRID_X + wid.x, and the padding workgroups past ROWS return; GRID_X = 0: no wrap.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> sc: array<f32>;  // HAS_SCALE only; any read-only buffer otherwise

@group(0) @binding(4) var<storage, read> w2: array<f32>;  // entry `then_norm` only
@group(0) @binding(5) var<storage, read_write> z: array<f32>;

// y's row `row` as documented above.
fn norm_row(row: u32, lid: u32) {
  let base = row * N;
  var s = 0.0;
  for (var i = lid; i < N; i += WG) {
    let v = x[base + i];
    s += v * v;
  }
  let scale = inverseSqrt(workgroup_sum(s, lid) / f32(N) + EPS);
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

fn row_index(wid: vec3<u32>) -> u32 {
  return wid.y * GRID_X + wid.x;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = row_index(wid);
  if (GRID_X > 0u && row >= ROWS) {
    return;  // the whole workgroup: uniform control flow
  }
  norm_row(row, lid);
}

// `main`, then z = y * rsqrt(mean(y^2) + EPS) * w2 over the same row: the residual stream's next norm (a
// layer's post-norm added into the stream, then the next block's input norm) without a dispatch of its own.
// Each lane reads back only the elements it wrote itself, so no barrier is needed between the two.
@compute @workgroup_size(WG)
fn then_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = row_index(wid);
  if (GRID_X > 0u && row >= ROWS) {
    return;
  }
  norm_row(row, lid);
  let base = row * N;
  var s = 0.0;
  for (var i = lid; i < N; i += WG) {
    let v = y[base + i];
    s += v * v;
  }
  let scale = inverseSqrt(workgroup_sum(s, lid) / f32(N) + EPS);
  for (var i = lid; i < N; i += WG) {
    z[base + i] = y[base + i] * scale * w2[i];
  }
}
