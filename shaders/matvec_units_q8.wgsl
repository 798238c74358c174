// The unit dot products of the matrix-vector kernels (matvec.wgsl and its subgroup variant) over the
// activation quantised to 8 bits, for the weight types whose quant/<type>.wgsl has unit_dot_q8. The same
// interface as matvec_units.wgsl, which works on the f32 activation.
//
// Why: a decode product spends its time on per-weight integer work (extracting nibbles, converting them to
// floats, one FMA each) and on reading the f32 activation, 4 bytes for every weight of half a byte. With the
// activation as signed bytes, dot4I8Packed multiplies 4 quants by 4 activations and sums them in one
// instruction (DP4A on NVIDIA, AMD and Intel; a short polyfill elsewhere), and the activation is read from
// workgroup memory, a byte per weight. llama.cpp's CUDA and Vulkan backends decode the same way.
//
// prepare_x quantises X in every workgroup, as llama.cpp's q8_1 does in a kernel of its own: blocks of 32
// values with d = max|x| / 127 and q = round(x / d) (ties to even), so x ~ d * q. Doing it here costs a
// dispatch nothing: each workgroup reads the whole activation anyway. Its cost is one more memory round trip
// before the first weight load, so the host takes this path for products large enough (ops/matmul.py).
// Workgroup memory: COLS + COLS / 8 bytes (rows of up to 12288 columns fit with the reduction's 2 KiB).

const XBLOCKS: u32 = COLS / 32u;

var<workgroup> xq: array<u32, COLS / 4u>;  // the quants, 4 a word, in the order of X's vec4s
var<workgroup> xd: array<f32, XBLOCKS>;  // d of each block of 32

fn quantise8(v: vec4<f32>, inv: f32) -> u32 {
  return pack4xI8(vec4<i32>(round(v * inv)));
}

// Called by every lane of the workgroup, in uniform control flow, before any unit_rows_at.
fn prepare_x(lid: u32) {
  for (var blk = lid; blk < XBLOCKS; blk += WG) {
    let v = 8u * blk;
    let a0 = X[v];
    let a1 = X[v + 1u];
    let a2 = X[v + 2u];
    let a3 = X[v + 3u];
    let a4 = X[v + 4u];
    let a5 = X[v + 5u];
    let a6 = X[v + 6u];
    let a7 = X[v + 7u];
    let m4 = max(max(max(abs(a0), abs(a1)), max(abs(a2), abs(a3))),
                 max(max(abs(a4), abs(a5)), max(abs(a6), abs(a7))));
    let d = max(max(m4.x, m4.y), max(m4.z, m4.w)) / 127.0;
    let inv = select(0.0, 1.0 / d, d > 0.0);
    xq[v] = quantise8(a0, inv);
    xq[v + 1u] = quantise8(a1, inv);
    xq[v + 2u] = quantise8(a2, inv);
    xq[v + 3u] = quantise8(a3, inv);
    xq[v + 4u] = quantise8(a4, inv);
    xq[v + 5u] = quantise8(a5, inv);
    xq[v + 6u] = quantise8(a6, inv);
    xq[v + 7u] = quantise8(a7, inv);
    xd[blk] = d;
  }
  workgroupBarrier();
}

// As in matvec_units.wgsl; xo must be 0 (one activation).
fn unit_rows_at(xo: u32, u: u32, b0: u32, b1: u32, b2: u32, b3: u32) -> vec4<f32> {
  let blk = u / UPB;
  let k = u % UPB;
  let xb = blk * (QK / 4u);
  let r0 = xb + unit_run(k, 0u);
  let r1 = xb + unit_run(k, 1u);
  var r2 = r0;
  var r3 = r1;
  if (UNIT_RUNS > 2u) {
    r2 = xb + unit_run(k, 2u);
    r3 = xb + unit_run(k, 3u);
  }
  let x0 = xq[r0];
  let x1 = xq[r1];
  let x2 = xq[r2];
  let x3 = xq[r3];
  let dx = vec4<f32>(xd[r0 / 8u], xd[r1 / 8u], xd[r2 / 8u], xd[r3 / 8u]);
  let off = blk * BLOCK_BYTES;
  var s = vec4<f32>(0.0);
  s.x = unit_dot_q8(b0 + off, k, x0, x1, x2, x3, dx);
  if (R > 1u) {
    s.y = unit_dot_q8(b1 + off, k, x0, x1, x2, x3, dx);
  }
  if (R > 2u) {
    s.z = unit_dot_q8(b2 + off, k, x0, x1, x2, x3, dx);
    s.w = unit_dot_q8(b3 + off, k, x0, x1, x2, x3, dx);
  }
  return s;
}
