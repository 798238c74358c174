// DiffusionGemma's self-conditioning input, a probability-weighted mix of embedding rows (ops/denoise.py):
//   out[c, d] = SCALE * sum_v P[c, v] * W[v, d]
// with P f32 [N_POS, VOCAB] (each row a softmax, or all zeros) and the table W kept as raw GGUF bytes, dequantised
// here (quant/<type>.wgsl; see quant/f32.wgsl for the interface). It is matmul.wgsl's tiling with the sum running
// over the table's rows instead of along them: a workgroup of 16 x 16 lanes owns a TC x TD tile of (positions,
// dims) and walks the rows TK at a time, dequantising a TK x TD tile of W once into workgroup memory (runs of 4
// consecutive dims: no transpose) and reusing it for all TC positions; each lane accumulates CPT positions x DPT
// dims (4 or 8 each). The P tile is stored k-major so that a vec4 read gives 4 consecutive positions.
//
// The real model sums 262144 rows into a 256 x 2816 output, only 44 tiles of 128 x 128: far too few workgroups
// for a large GPU. So the rows are cut into splits of SPLIT rows (grid z), each writing its partial tile into
// slice SLICE0 + z of a scratch [slices, N_POS, COLS] that mix_rows_reduce.wgsl sums (DIRECT: one slice in all,
// written straight to out with SCALE). A table split into parts (separate buffers, Device.upload_rows) takes one
// dispatch per part, its rows being the global rows ROW0 .. ROW0 + ROWS - 1, i.e. the columns ROW0.. of P.
// Constants: ROWS, ROW0, COLS, ROW_BYTES (one table row), N_POS, VOCAB (P's row length), CPT, DPT (4 or 8),
// TK (a multiple of 4; (TC + TD) * TK * 4 bytes of workgroup memory), SPLIT (a multiple of TK), SLICE0, DIRECT,
// SCALE (used when DIRECT).
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> P: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

const TC: u32 = 16u * CPT;
const TD: u32 = 16u * DPT;

var<workgroup> es: array<vec4<f32>, TK * TD / 4u>;  // es[k * TD/4 + j] = W[k0 + k, d0 + 4j .. 4j + 3]
var<workgroup> ps: array<vec4<f32>, TK * TC / 4u>;  // ps[k * TC/4 + t/4][t % 4] = P[c0 + t, k0 + k]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d0 = wid.x * TD;
  let c0 = wid.y * TC;
  let kb = wid.z * SPLIT;
  let ke = min(kb + SPLIT, ROWS);
  let tx = lid % 16u;  // this lane's dims: 4 tx .. 4 tx + 3, and 64 + 4 tx .. when DPT == 8
  let ty = lid / 16u;  // this lane's positions: 4 ty .. 4 ty + 3, and 64 + 4 ty .. when CPT == 8
  // aI[j]: position 4 ty + I, dim 4 tx + j; bI: the same positions, dim 64 + 4 tx + j; cI / dI: position
  // 64 + 4 ty + I, dims as aI / bI. Named vectors, not an array (see matmul.wgsl).
  var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
  var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
  var c0v = vec4<f32>(0.0); var c1v = vec4<f32>(0.0); var c2v = vec4<f32>(0.0); var c3v = vec4<f32>(0.0);
  var d0v = vec4<f32>(0.0); var d1v = vec4<f32>(0.0); var d2v = vec4<f32>(0.0); var d3v = vec4<f32>(0.0);
  for (var k0 = kb; k0 < ke; k0 += TK) {
    // W tile: TK rows x TD/4 runs; consecutive lanes take consecutive runs of a row (contiguous bytes).
    for (var i = 0u; i < TK * TD / 4u / 256u; i++) {
      let idx = lid + 256u * i;
      let j = idx % (TD / 4u);
      let kk = idx / (TD / 4u);
      let col = d0 + 4u * j;
      var v = vec4<f32>(0.0);
      if (k0 + kk < ke && col < COLS) {
        v = run_deq((k0 + kk) * ROW_BYTES + (col / QK) * BLOCK_BYTES, (col % QK) / 4u);
        // Float rows of any length: zero the dims past the end (they belong to the next row).
        v = select(vec4<f32>(0.0), v, vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(COLS));
      }
      es[kk * (TD / 4u) + j] = v;
    }
    // P tile: TC positions x TK/4 quads of rows; a lane reads 4 consecutive probabilities of one position (one
    // 16-byte piece), consecutive lanes consecutive positions, so the transposed stores hit distinct banks.
    for (var i = 0u; i < TC * TK / 4u / 256u; i++) {
      let idx = lid + 256u * i;
      let t = idx % TC;
      let kq = 4u * (idx / TC);
      var v = vec4<f32>(0.0);
      if (c0 + t < N_POS) {
        let o = (c0 + t) * VOCAB + ROW0 + k0 + kq;
        for (var q = 0u; q < 4u; q++) {
          if (k0 + kq + q < ke) {
            v[q] = P[o + q];
          }
        }
      }
      let s = kq * (TC / 4u) + t / 4u;
      let r = t % 4u;
      ps[s][r] = v.x;
      ps[s + TC / 4u][r] = v.y;
      ps[s + 2u * (TC / 4u)][r] = v.z;
      ps[s + 3u * (TC / 4u)][r] = v.w;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
      let e = es[kk * (TD / 4u) + tx];
      let p = ps[kk * (TC / 4u) + ty];
      a0 += p.x * e;
      a1 += p.y * e;
      a2 += p.z * e;
      a3 += p.w * e;
      if (DPT == 8u) {
        let e2 = es[kk * (TD / 4u) + 16u + tx];
        b0 += p.x * e2;
        b1 += p.y * e2;
        b2 += p.z * e2;
        b3 += p.w * e2;
        if (CPT == 8u) {
          let p2 = ps[kk * (TC / 4u) + 16u + ty];
          c0v += p2.x * e;
          c1v += p2.y * e;
          c2v += p2.z * e;
          c3v += p2.w * e;
          d0v += p2.x * e2;
          d1v += p2.y * e2;
          d2v += p2.z * e2;
          d3v += p2.w * e2;
        }
      } else if (CPT == 8u) {
        let p2 = ps[kk * (TC / 4u) + 16u + ty];
        c0v += p2.x * e;
        c1v += p2.y * e;
        c2v += p2.z * e;
        c3v += p2.w * e;
      }
    }
    workgroupBarrier();
  }
  let c = c0 + 4u * ty;
  let d = d0 + 4u * tx;
  store4(wid.z, c, d, a0);
  store4(wid.z, c + 1u, d, a1);
  store4(wid.z, c + 2u, d, a2);
  store4(wid.z, c + 3u, d, a3);
  if (DPT == 8u) {
    store4(wid.z, c, d + 64u, b0);
    store4(wid.z, c + 1u, d + 64u, b1);
    store4(wid.z, c + 2u, d + 64u, b2);
    store4(wid.z, c + 3u, d + 64u, b3);
  }
  if (CPT == 8u) {
    store4(wid.z, c + 64u, d, c0v);
    store4(wid.z, c + 65u, d, c1v);
    store4(wid.z, c + 66u, d, c2v);
    store4(wid.z, c + 67u, d, c3v);
    if (DPT == 8u) {
      store4(wid.z, c + 64u, d + 64u, d0v);
      store4(wid.z, c + 65u, d + 64u, d1v);
      store4(wid.z, c + 66u, d + 64u, d2v);
      store4(wid.z, c + 67u, d + 64u, d3v);
    }
  }
}

// Position c, dims d .. d + 3 (those that exist) of split z's slice, or of out when DIRECT.
fn store4(z: u32, c: u32, d: u32, v: vec4<f32>) {
  if (c >= N_POS) {
    return;
  }
  var o = c * COLS + d;
  var y = v;
  if (DIRECT) {
    y = SCALE * v;
  } else {
    o += (SLICE0 + z) * N_POS * COLS;
  }
  for (var j = 0u; j < 4u; j++) {
    if (d + j < COLS) {
      Y[o + j] = y[j];
    }
  }
}
