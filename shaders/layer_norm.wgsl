// LayerNorm over rows of N f32 values, one workgroup per row (Kokoro: ALBERT's LayerNorms over 128 and 768
// channels, eps 1e-12, weight and bias; the text encoder's over 512, eps 1e-5, weight and bias, then LeakyReLU
// 0.2; the duration encoder's AdaLayerNorm over 512, eps 1e-5, no weight, with a style's gamma and beta):
//   mean = sum_i x_i / N,  var = sum_i (x_i - mean)^2 / N  (biased; two passes, no cancellation)
//   y_i = (x_i - mean) * inverseSqrt(var + EPS)
//   y_i = y_i * w[i] + b[i]                                   (HAS_WEIGHT, HAS_BIAS: each optional)
//   y_i = (1 + style[STYLE_OFFSET + i]) * y_i + style[STYLE_OFFSET + N + i]   (HAS_STYLE)
//   y_i = y_i >= 0 ? y_i : SLOPE * y_i                       (LEAKY)
// Row r reads x[r * IN_STRIDE + i] and writes y to out[r * OUT_STRIDE + OUT_OFFSET + i], i < N.
// Entry `main`: x and out are distinct buffers. Entry `inplace`: one buffer, read and written (WebGPU forbids
// binding a buffer both read-only and writable); every thread loads its values of the row before the first
// barrier and stores after the last, and rows do not overlap (OUT_OFFSET + N <= OUT_STRIDE = IN_STRIDE, checked
// by the op), so no value is overwritten before it is read.
// Each thread keeps its NPT = ceil(N / WG) values in registers: one read of x. Constants: N, NPT, WG (a power of
// two), EPS, HAS_WEIGHT, HAS_BIAS, HAS_STYLE, STYLE_OFFSET, LEAKY, SLOPE, IN_STRIDE, OUT_STRIDE, OUT_OFFSET, and
// GRID_X, ROWS: more rows than one grid dimension holds wrap into y (row = wid.y * GRID_X + wid.x; workgroups
// past ROWS return); GRID_X = 0: no wrap.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;      // HAS_WEIGHT; else any read-only buffer
@group(0) @binding(2) var<storage, read> b: array<f32>;      // HAS_BIAS; else any read-only buffer
@group(0) @binding(3) var<storage, read> style: array<f32>;  // HAS_STYLE; else any read-only buffer
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@group(0) @binding(0) var<storage, read_write> xio: array<f32>;

var<workgroup> partial: array<f32, WG>;

// The sum of v over the workgroup's threads (a tree; every thread gets it). Ends with a barrier, so the
// scratch can be reused at once.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
  partial[lid] = v;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lid < stride) {
      partial[lid] += partial[lid + stride];
    }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier();
  return total;
}

fn row_of(wid: vec3<u32>) -> u32 {
  return wid.y * GRID_X + wid.x;
}

// Normalises the row's values v[k] = x[lid + k * WG] (k < NPT, those with lid + k * WG < N) in place and applies
// the weight, bias, style and activation.
fn normalize(lid: u32, v: ptr<function, array<f32, NPT>>) {
  var s = 0.0;
  for (var k = 0u; k < NPT; k++) {
    if (lid + k * WG < N) {
      s += (*v)[k];
    }
  }
  let mean = workgroup_sum(lid, s) / f32(N);
  var q = 0.0;
  for (var k = 0u; k < NPT; k++) {
    if (lid + k * WG < N) {
      let d = (*v)[k] - mean;
      (*v)[k] = d;
      q += d * d;
    }
  }
  let rstd = inverseSqrt(workgroup_sum(lid, q) / f32(N) + EPS);
  for (var k = 0u; k < NPT; k++) {
    let i = lid + k * WG;
    if (i < N) {
      var y = (*v)[k] * rstd;
      if (HAS_WEIGHT) {
        y *= w[i];
      }
      if (HAS_BIAS) {
        y += b[i];
      }
      if (HAS_STYLE) {
        y = (1.0 + style[STYLE_OFFSET + i]) * y + style[STYLE_OFFSET + N + i];
      }
      if (LEAKY) {
        y = select(SLOPE * y, y, y >= 0.0);
      }
      (*v)[k] = y;
    }
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = row_of(wid);
  if (GRID_X > 0u && row >= ROWS) {
    return;  // the whole workgroup: uniform control flow
  }
  var v: array<f32, NPT>;
  for (var k = 0u; k < NPT; k++) {
    let i = lid + k * WG;
    v[k] = select(0.0, x[row * IN_STRIDE + min(i, N - 1u)], i < N);
  }
  normalize(lid, &v);
  for (var k = 0u; k < NPT; k++) {
    let i = lid + k * WG;
    if (i < N) {
      out[row * OUT_STRIDE + OUT_OFFSET + i] = v[k];
    }
  }
}

@compute @workgroup_size(WG)
fn inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = row_of(wid);
  if (GRID_X > 0u && row >= ROWS) {
    return;
  }
  var v: array<f32, NPT>;
  for (var k = 0u; k < NPT; k++) {
    let i = lid + k * WG;
    v[k] = select(0.0, xio[row * IN_STRIDE + min(i, N - 1u)], i < N);
  }
  normalize(lid, &v);
  for (var k = 0u; k < NPT; k++) {
    let i = lid + k * WG;
    if (i < N) {
      xio[row * OUT_STRIDE + OUT_OFFSET + i] = v[k];
    }
  }
}
