// RMSNorm over the last axis of a [ROWS, N] f32 array, one workgroup per row:
//   y = x * rsqrt(mean(x^2) + EPS) * w          (Gemma 4, and Gemma 3 as llama.cpp stores it: +1 folded in)
//   y = x * rsqrt(mean(x^2) + EPS) * (1 + w)    (ADD_ONE: Gemma 3's reference convention, unfolded weights)
//   y = x * rsqrt(mean(x^2) + EPS)              (HAS_WEIGHT = false)
// The weight has N elements. Per-head norms (q/k norms) are the same op over [tokens * heads, head_dim].
// ACCUMULATE: y += (the normalised row) instead of y = ..., fusing a post-norm with its residual add.
// HAS_SCALE: the result is then multiplied by sc[0] (Gemma 4's layer_output_scale: y = (y + norm(x) * w) * s).
// Entry `then_norm` goes on to norm the row it wrote, into z (below).
//
// At decode this is one workgroup on the token's critical path, so it is written for latency: every lane
// issues all its loads (x, w, y) at once and keeps its elements in registers between the passes (a Row of
// vec4s, never a private array: NVIDIA's compiler puts loop-indexed private arrays in device memory), so a
// norm costs one memory round trip and its sums, not a round trip per element. Lane `lid` owns the elements
// lid + k * WG, k < NPT (NPT = ceil(N / WG) <= 32), coalesced across lanes.
// Constants: N, EPS, HAS_WEIGHT, ADD_ONE, ACCUMULATE, HAS_SCALE, WG (workgroup size, a power of two), NPT,
// GRID_X and ROWS: more rows than a grid dimension holds (the vision tower's per-head norms: 10080 patches x 12
// heads) wrap into y, row = wid.y * GRID_X + wid.x, and the padding workgroups past ROWS return; GRID_X = 0: no
// wrap.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> sc: array<f32>;  // HAS_SCALE only; any read-only buffer otherwise

@group(0) @binding(4) var<storage, read> w2: array<f32>;  // entry `then_norm` only
@group(0) @binding(5) var<storage, read_write> z: array<f32>;

// A lane's elements k = 0..31 of a row: a.x = k 0, a.y = k 1, ..., h.w = k 31 (zero past N and past NPT).
struct Row {
  a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>, e: vec4<f32>, f: vec4<f32>, g: vec4<f32>, h: vec4<f32>,
}

const X_IN: u32 = 0u;
const W_IN: u32 = 1u;
const Y_IN: u32 = 2u;

// The lane's element k at offset base of input src (a constant at every call: the switch folds away), or 0
// past the row. w2 and z have functions of their own: a buffer an entry point does not reach stays out of its
// bind group layout.
fn elem(src: u32, base: u32, lid: u32, k: u32) -> f32 {
  let i = lid + k * WG;
  if (k >= NPT || i >= N) {
    return 0.0;
  }
  switch src {
    case 0u: { return x[base + i]; }
    case 1u: { return w[i]; }
    default: { return y[base + i]; }
  }
}

fn load4(src: u32, base: u32, lid: u32, k0: u32) -> vec4<f32> {
  return vec4<f32>(elem(src, base, lid, k0), elem(src, base, lid, k0 + 1u), elem(src, base, lid, k0 + 2u),
                   elem(src, base, lid, k0 + 3u));
}

fn load_row(src: u32, base: u32, lid: u32) -> Row {
  return Row(load4(src, base, lid, 0u), load4(src, base, lid, 4u), load4(src, base, lid, 8u),
             load4(src, base, lid, 12u), load4(src, base, lid, 16u), load4(src, base, lid, 20u),
             load4(src, base, lid, 24u), load4(src, base, lid, 28u));
}

fn w2_elem(lid: u32, k: u32) -> f32 {
  let i = lid + k * WG;
  return select(0.0, w2[min(i, N - 1u)], k < NPT && i < N);
}

fn w2_4(lid: u32, k0: u32) -> vec4<f32> {
  return vec4<f32>(w2_elem(lid, k0), w2_elem(lid, k0 + 1u), w2_elem(lid, k0 + 2u), w2_elem(lid, k0 + 3u));
}

fn w2_row(lid: u32) -> Row {
  return Row(w2_4(lid, 0u), w2_4(lid, 4u), w2_4(lid, 8u), w2_4(lid, 12u), w2_4(lid, 16u), w2_4(lid, 20u),
             w2_4(lid, 24u), w2_4(lid, 28u));
}

// Writes elements k0..k0+3 of lane lid into y (to_z false) or z (true).
fn store4(base: u32, lid: u32, k0: u32, v: vec4<f32>) {
  for (var j = 0u; j < 4u; j++) {
    let i = lid + (k0 + j) * WG;
    if (k0 + j < NPT && i < N) {
      y[base + i] = v[j];
    }
  }
}

fn store_row(base: u32, lid: u32, r: Row) {
  store4(base, lid, 0u, r.a);
  store4(base, lid, 4u, r.b);
  store4(base, lid, 8u, r.c);
  store4(base, lid, 12u, r.d);
  store4(base, lid, 16u, r.e);
  store4(base, lid, 20u, r.f);
  store4(base, lid, 24u, r.g);
  store4(base, lid, 28u, r.h);
}

fn z_store4(base: u32, lid: u32, k0: u32, v: vec4<f32>) {
  for (var j = 0u; j < 4u; j++) {
    let i = lid + (k0 + j) * WG;
    if (k0 + j < NPT && i < N) {
      z[base + i] = v[j];
    }
  }
}

fn z_store_row(base: u32, lid: u32, r: Row) {
  z_store4(base, lid, 0u, r.a);
  z_store4(base, lid, 4u, r.b);
  z_store4(base, lid, 8u, r.c);
  z_store4(base, lid, 12u, r.d);
  z_store4(base, lid, 16u, r.e);
  z_store4(base, lid, 20u, r.f);
  z_store4(base, lid, 24u, r.g);
  z_store4(base, lid, 28u, r.h);
}

fn sum_squares(r: Row) -> f32 {
  return ((dot(r.a, r.a) + dot(r.b, r.b)) + (dot(r.c, r.c) + dot(r.d, r.d)))
       + ((dot(r.e, r.e) + dot(r.f, r.f)) + (dot(r.g, r.g) + dot(r.h, r.h)));
}

// acc + v * s * m, elementwise over the row.
fn fma_row(acc: Row, v: Row, s: f32, m: Row) -> Row {
  return Row(acc.a + v.a * s * m.a, acc.b + v.b * s * m.b, acc.c + v.c * s * m.c, acc.d + v.d * s * m.d,
             acc.e + v.e * s * m.e, acc.f + v.f * s * m.f, acc.g + v.g * s * m.g, acc.h + v.h * s * m.h);
}

fn scale_row(v: Row, s: f32) -> Row {
  return Row(v.a * s, v.b * s, v.c * s, v.d * s, v.e * s, v.f * s, v.g * s, v.h * s);
}

fn fill(v: f32) -> Row {
  let q = vec4<f32>(v);
  return Row(q, q, q, q, q, q, q, q);
}

// y's row `row` as documented above; returns the lane's elements of the row it wrote.
fn norm_row(row: u32, lid: u32) -> Row {
  let base = row * N;
  let xr = load_row(X_IN, base, lid);
  var wr = fill(1.0);
  if (HAS_WEIGHT) {
    wr = load_row(W_IN, 0u, lid);
    if (ADD_ONE) {
      wr = fma_row(fill(1.0), wr, 1.0, fill(1.0));
    }
  }
  var acc = fill(0.0);
  if (ACCUMULATE) {
    acc = load_row(Y_IN, base, lid);
  }
  var post = 1.0;
  if (HAS_SCALE) {
    post = sc[0];
  }
  let scale = inverseSqrt(workgroup_sum(sum_squares(xr), lid) / f32(N) + EPS);
  let out = scale_row(fma_row(acc, xr, scale, wr), post);
  store_row(base, lid, out);
  return out;
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
// The second sum is over the values the lane holds in registers (the f32 values it stored), so no barrier or
// reload is needed between the two.
@compute @workgroup_size(WG)
fn then_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = row_index(wid);
  if (GRID_X > 0u && row >= ROWS) {
    return;
  }
  let w2r = w2_row(lid);  // issued with the first pass's loads
  let yr = norm_row(row, lid);
  let scale = inverseSqrt(workgroup_sum(sum_squares(yr), lid) / f32(N) + EPS);
  z_store_row(row * N, lid, fma_row(fill(0.0), yr, scale, w2r));
}
