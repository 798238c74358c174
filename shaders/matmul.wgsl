// Y[t, ROW0 + r] (+)= SCALE * sum_c W[r, c] * X[t, c] for N_TOK tokens (prefill), with W kept as raw GGUF
// bytes and dequantised here (quant/<type>.wgsl; see quant/f32.wgsl for the interface).
//
// Classic shared-memory tiling: a workgroup of 16 x 16 lanes owns a TM x TN tile of (rows, tokens) and walks
// the columns TK at a time. Each step dequantises a TM x TK tile of W once into workgroup memory and reuses
// it for all TN tokens, so the dequantisation cost is divided by TN; each lane then accumulates a block of
// RPT rows x TPT tokens (4 or 8 each) from vec4 reads of both tiles. Tiles are stored k-major so that those
// vec4 reads are 4 consecutive rows / tokens. 4 x 4 blocks take 2 workgroup loads per 16 FMAs; 8 x 8 blocks 4
// per 64, which is what a long matrix-matrix product (the vision tower's 2520 patches) is bound by, but their
// 128 x 128 tiles leave small products with few workgroups (ops/matmul.py picks).
//
// The same kernel serves one token when a float weight's rows are not a multiple of 8 long (the matvec
// kernel needs whole 8-element units); rows, tokens and columns that do not fill a tile are masked.
// Entry points: `main` (N_TOK tokens) and `run` (the Step uniform's n_tokens of them, below).
//
// Split K (KSPLIT > 1, grid z = KSPLIT): workgroup z walks only the columns [z KC, z KC + KC) and writes its
// unscaled partial sums to Y = a scratch of KSPLIT blocks of SPLIT_STRIDE (= N_TOK x ROWS) values, row-major
// [split][token][row] (ROW0 0, OUT_STRIDE ROWS, no ACC, SCALE 1); matmul_reduce.wgsl adds the blocks into the
// real output. A prefill chunk's narrow products (1536 rows: 24 row tiles, times 2 token tiles for 128 tokens)
// otherwise give a GPU of a hundred multiprocessors a few dozen workgroups, each walking all of K alone, one
// memory round trip per k-step; split, several workgroups share each multiprocessor and hide each other's.
// Constants: KSPLIT, KC (a multiple of TK), SPLIT_STRIDE, ROWS, ROW0, COLS, ROW_BYTES (see matvec.wgsl),
// N_TOK, OUT_STRIDE (the row length of Y:
// the rows of the whole weight, or more when products share an output), ACC, SCALE, RPT and TPT (4 or 8), TK (a multiple of 4 dividing 8 * RPT: the
// workgroup memory is (TM + TN) * TK * 4 bytes, 16 KiB for 8 x 8 blocks with TK 16).
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

const TM: u32 = 16u * RPT;
const TN: u32 = 16u * TPT;
const RG: u32 = min(4u, TK / 4u);  // W runs a lane group takes per row (see the tile loads)
const CG: u32 = 4u;                // X columns a lane group takes per token
// TK: runs of 4 never straddle a block since QK is a multiple of 4

var<workgroup> ws: array<vec4<f32>, TK * TM / 4u>;  // ws[k * TM/4 + r/4][r % 4] = W[r0 + r, k0 + k]
var<workgroup> xs: array<vec4<f32>, TK * TN / 4u>;  // xs[k * TN/4 + t/4][t % 4] = X[t0 + t, k0 + k]

@group(0) @binding(3) var<uniform> step: Step;  // entry `run` only

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  tile(wid, lid, N_TOK);
}

// A recorded graph's run of up to N_TOK tokens (a prefill chunk): only the step's n_tokens are computed, and
// the token tiles past them return at once, so a short prompt in a large chunk costs what its tokens cost.
@compute @workgroup_size(256)
fn run(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  // Passed down as a value, not kept in a module-scope variable: WGSL's uniformity analysis treats a private
  // variable as non-uniform, and the barriers below need uniform control flow (Chrome's compiler enforces it).
  let n_tok = min(N_TOK, step.n_tokens);
  if (wid.y * TN >= n_tok) {
    return;  // the whole workgroup: uniform control flow
  }
  tile(wid, lid, n_tok);
}

// The tile of workgroup wid, for tokens t < n_tok.
fn tile(wid: vec3<u32>, lid: u32, n_tok: u32) {
  let r0 = wid.x * TM;
  let t0 = wid.y * TN;
  let kb = wid.z * KC;  // this split's columns (all of them without a split: KC = COLS rounded up)
  let ke = min(COLS, kb + KC);
  let base = wid.z * SPLIT_STRIDE;
  let tx = lid % 16u;  // this lane's tokens: 4 tx .. 4 tx + 3, and 64 + 4 tx .. when TPT == 8
  let ty = lid / 16u;  // this lane's rows: 4 ty .. 4 ty + 3, and 64 + 4 ty .. when RPT == 8
  // aI[j]: row 4 ty + I, token 4 tx + j; bI: row 64 + 4 ty + I; cI / dI: the same rows, token 64 + 4 tx + j.
  // Named vectors, not an array: a private array indexed in a loop is compiled to local memory, which made
  // every multiply-add a memory round trip. The unused ones (RPT or TPT 4) are dead code.
  var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
  var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
  var c0 = vec4<f32>(0.0); var c1 = vec4<f32>(0.0); var c2 = vec4<f32>(0.0); var c3 = vec4<f32>(0.0);
  var d0 = vec4<f32>(0.0); var d1 = vec4<f32>(0.0); var d2 = vec4<f32>(0.0); var d3 = vec4<f32>(0.0);
  for (var k0 = kb; k0 < ke; k0 += TK) {
    // W tile: TM rows x TK/4 runs. A warp's 32 lanes take RG = 4 neighbouring runs (16 weights, contiguous in
    // the block; 2 when TK is 8) of 8 rows: each load instruction touches 8 rows' cache lines, not 32 (a lane
    // per row), at the price of 4-way bank conflicts on the transposed stores. Measured on an H200, one lane
    // per row made the tile loads cost more than the multiply-adds (a 128-token chunk of E2B: ~5 us a k-step).
    for (var i = 0u; i < TM * TK / 4u / 256u; i++) {
      let idx = lid + 256u * i;
      let g = idx / RG;
      let row = g % TM;
      let kk = 4u * (RG * (g / TM) + idx % RG);
      let col = k0 + kk;
      var v = vec4<f32>(0.0);
      if (r0 + row < ROWS && col < ke) {
        v = run_deq((r0 + row) * ROW_BYTES + (col / QK) * BLOCK_BYTES, (col % QK) / 4u);
        // Float rows of any length: zero the columns past the end (they belong to the next row).
        v = select(vec4<f32>(0.0), v, vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(ke));
      }
      let o = kk * (TM / 4u) + row / 4u;
      let c = row % 4u;
      ws[o][c] = v.x;
      ws[o + TM / 4u][c] = v.y;
      ws[o + 2u * (TM / 4u)][c] = v.z;
      ws[o + 3u * (TM / 4u)][c] = v.w;
    }
    // X tile: TN tokens x TK columns, one element per lane per pass; a warp reads CG = 4 neighbouring columns
    // of 8 tokens (8 cache lines per load, 4-way bank conflicts on the stores), as for W.
    for (var i = 0u; i < TN * TK / 256u; i++) {
      let idx = lid + 256u * i;
      let g = idx / CG;
      let t = g % TN;
      let kk = CG * (g / TN) + idx % CG;
      var v = 0.0;
      if (t0 + t < n_tok && k0 + kk < ke) {
        v = X[(t0 + t) * COLS + k0 + kk];
      }
      xs[kk * (TN / 4u) + t / 4u][t % 4u] = v;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
      let w = ws[kk * (TM / 4u) + ty];
      let x = xs[kk * (TN / 4u) + tx];
      a0 += w.x * x;
      a1 += w.y * x;
      a2 += w.z * x;
      a3 += w.w * x;
      if (RPT == 8u) {
        let w2 = ws[kk * (TM / 4u) + 16u + ty];
        b0 += w2.x * x;
        b1 += w2.y * x;
        b2 += w2.z * x;
        b3 += w2.w * x;
        if (TPT == 8u) {
          let x2 = xs[kk * (TN / 4u) + 16u + tx];
          c0 += w.x * x2;
          c1 += w.y * x2;
          c2 += w.z * x2;
          c3 += w.w * x2;
          d0 += w2.x * x2;
          d1 += w2.y * x2;
          d2 += w2.z * x2;
          d3 += w2.w * x2;
        }
      } else if (TPT == 8u) {
        let x2 = xs[kk * (TN / 4u) + 16u + tx];
        c0 += w.x * x2;
        c1 += w.y * x2;
        c2 += w.z * x2;
        c3 += w.w * x2;
      }
    }
    workgroupBarrier();
  }
  let row = r0 + 4u * ty;
  let t = t0 + 4u * tx;
  store_row(base, row, t, a0, n_tok);
  store_row(base, row + 1u, t, a1, n_tok);
  store_row(base, row + 2u, t, a2, n_tok);
  store_row(base, row + 3u, t, a3, n_tok);
  if (RPT == 8u) {
    store_row(base, row + 64u, t, b0, n_tok);
    store_row(base, row + 65u, t, b1, n_tok);
    store_row(base, row + 66u, t, b2, n_tok);
    store_row(base, row + 67u, t, b3, n_tok);
  }
  if (TPT == 8u) {
    store_row(base, row, t + 64u, c0, n_tok);
    store_row(base, row + 1u, t + 64u, c1, n_tok);
    store_row(base, row + 2u, t + 64u, c2, n_tok);
    store_row(base, row + 3u, t + 64u, c3, n_tok);
    if (RPT == 8u) {
      store_row(base, row + 64u, t + 64u, d0, n_tok);
      store_row(base, row + 65u, t + 64u, d1, n_tok);
      store_row(base, row + 66u, t + 64u, d2, n_tok);
      store_row(base, row + 67u, t + 64u, d3, n_tok);
    }
  }
}

// Outputs of one row for 4 tokens from t (skipping rows past the end and tokens from n_tok on).
fn store_row(base: u32, row: u32, t: u32, v: vec4<f32>, n_tok: u32) {
  if (row >= ROWS) {
    return;
  }
  store1(base, row, t, v.x, n_tok);
  store1(base, row, t + 1u, v.y, n_tok);
  store1(base, row, t + 2u, v.z, n_tok);
  store1(base, row, t + 3u, v.w, n_tok);
}

fn store1(base: u32, row: u32, t: u32, v: f32, n_tok: u32) {
  if (t >= n_tok) {
    return;
  }
  let o = base + t * OUT_STRIDE + ROW0 + row;
  var y = SCALE * v;
  if (ACC) {
    y += Y[o];
  }
  Y[o] = y;
}
