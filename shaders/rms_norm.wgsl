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
// issues all its loads (x, w, y) at once and keeps its values in registers between the passes (a Row of vec4s,
// never a private array: NVIDIA's compiler puts loop-indexed private arrays in device memory), so a norm costs
// one memory round trip and its sums. Lane `lid` owns the vec4s lid + k * WG, k < VPL (VPL = ceil(N / 4 / WG)
// <= 8), coalesced across lanes; rows hold whole vec4s (N % 4 == 0). Loads and stores are whole vec4s: with one
// scalar access (and its bounds test) per element, the same norm took 2.5x as long on an H200 (7.3 against
// 2.8 us for `then_norm` over 1,536 values).
// Constants: N, EPS, HAS_WEIGHT, ADD_ONE, ACCUMULATE, HAS_SCALE, WG (workgroup size, a power of two), VPL,
// GRID_X and ROWS: more rows than a grid dimension holds (the vision tower's per-head norms: 10080 patches x 12
// heads) wrap into y, row = wid.y * GRID_X + wid.x, and the padding workgroups past ROWS return; GRID_X = 0: no
// wrap.
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> sc: array<f32>;  // HAS_SCALE only; any read-only buffer otherwise

@group(0) @binding(4) var<storage, read> w2: array<vec4<f32>>;  // entry `then_norm` only
@group(0) @binding(5) var<storage, read_write> z: array<vec4<f32>>;

const NV: u32 = N / 4u;  // vec4s per row

// A lane's vec4s k = 0..7 of a row: a = k 0, b = k 1, ..., h = k 7 (zero past the row and past VPL).
struct Row {
  a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>, e: vec4<f32>, f: vec4<f32>, g: vec4<f32>, h: vec4<f32>,
}

// The row's vec4 index of the lane's vec4 k, clamped into the row (the value is masked by `inside`). One
// function per buffer: a buffer an entry point does not reach stays out of its bind group layout.
fn at(lid: u32, k: u32) -> u32 {
  return min(lid + k * WG, NV - 1u);
}

fn inside(lid: u32, k: u32) -> bool {
  return k < VPL && lid + k * WG < NV;
}

fn x4(base: u32, lid: u32, k: u32) -> vec4<f32> {
  return select(vec4<f32>(0.0), x[base + at(lid, k)], inside(lid, k));
}

fn w4(lid: u32, k: u32) -> vec4<f32> {
  return select(vec4<f32>(0.0), w[at(lid, k)], inside(lid, k));
}

fn y4(base: u32, lid: u32, k: u32) -> vec4<f32> {
  return select(vec4<f32>(0.0), y[base + at(lid, k)], inside(lid, k));
}

fn w2_4(lid: u32, k: u32) -> vec4<f32> {
  return select(vec4<f32>(0.0), w2[at(lid, k)], inside(lid, k));
}

fn x_row(base: u32, lid: u32) -> Row {
  return Row(x4(base, lid, 0u), x4(base, lid, 1u), x4(base, lid, 2u), x4(base, lid, 3u), x4(base, lid, 4u),
             x4(base, lid, 5u), x4(base, lid, 6u), x4(base, lid, 7u));
}

fn w_row(lid: u32) -> Row {
  return Row(w4(lid, 0u), w4(lid, 1u), w4(lid, 2u), w4(lid, 3u), w4(lid, 4u), w4(lid, 5u), w4(lid, 6u),
             w4(lid, 7u));
}

fn y_row(base: u32, lid: u32) -> Row {
  return Row(y4(base, lid, 0u), y4(base, lid, 1u), y4(base, lid, 2u), y4(base, lid, 3u), y4(base, lid, 4u),
             y4(base, lid, 5u), y4(base, lid, 6u), y4(base, lid, 7u));
}

fn w2_row(lid: u32) -> Row {
  return Row(w2_4(lid, 0u), w2_4(lid, 1u), w2_4(lid, 2u), w2_4(lid, 3u), w2_4(lid, 4u), w2_4(lid, 5u),
             w2_4(lid, 6u), w2_4(lid, 7u));
}

fn store_y(base: u32, lid: u32, k: u32, v: vec4<f32>) {
  if (inside(lid, k)) {
    y[base + lid + k * WG] = v;
  }
}

fn store_row(base: u32, lid: u32, r: Row) {
  store_y(base, lid, 0u, r.a);
  store_y(base, lid, 1u, r.b);
  store_y(base, lid, 2u, r.c);
  store_y(base, lid, 3u, r.d);
  store_y(base, lid, 4u, r.e);
  store_y(base, lid, 5u, r.f);
  store_y(base, lid, 6u, r.g);
  store_y(base, lid, 7u, r.h);
}

fn store_z(base: u32, lid: u32, k: u32, v: vec4<f32>) {
  if (inside(lid, k)) {
    z[base + lid + k * WG] = v;
  }
}

fn z_store_row(base: u32, lid: u32, r: Row) {
  store_z(base, lid, 0u, r.a);
  store_z(base, lid, 1u, r.b);
  store_z(base, lid, 2u, r.c);
  store_z(base, lid, 3u, r.d);
  store_z(base, lid, 4u, r.e);
  store_z(base, lid, 5u, r.f);
  store_z(base, lid, 6u, r.g);
  store_z(base, lid, 7u, r.h);
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
  let base = row * NV;
  let xr = x_row(base, lid);
  var wr = fill(1.0);
  if (HAS_WEIGHT) {
    wr = w_row(lid);
    if (ADD_ONE) {
      wr = fma_row(fill(1.0), wr, 1.0, fill(1.0));
    }
  }
  var acc = fill(0.0);
  if (ACCUMULATE) {
    acc = y_row(base, lid);
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
  z_store_row(row * NV, lid, fma_row(fill(0.0), yr, scale, w2r));
}
