// Expert products for many tokens (prefill, a diffusion canvas), grouped by expert: Y[s, r] = W[e][r, :] . x_s
// for every slot s that chose expert e (the lists of moe_group.wgsl), x_s the slot's token's row of X
// (X_PER_SLOT: row s itself). The weight holds the experts one after another, RPE rows each; this dispatch sees
// one part of it, experts E0 .. E0 + NE - 1, and writes the slots of those experts only.
//
// The tiling of matmul.wgsl (see there), over one expert's tokens: a workgroup owns a TM x TN tile of (rows of
// expert e, entries of e's list) and walks the columns TK at a time, dequantising each TM x TK tile of the
// weight once into workgroup memory for all TN of its tokens. Each of the 256 lanes accumulates RPT rows x 4
// tokens (RPT 8: two blocks of 4 rows, TM / 2 apart, as in matmul.wgsl: 3 workgroup loads per 32 multiply-adds
// instead of 2 per 16); TN (16, 32 or 64 tokens) follows the expected tokens per expert, and TM = RPT * 1024 /
// TN keeps 256 lanes. Grid: x = row tiles of an expert, y = (expert of this part) x (tile of its list); a tile past the end
// of its expert's list returns at once, so the grid can cover the worst case (one expert taking every token).
//
// Constants: RPE, COLS, ROW_BYTES (see matvec.wgsl), N_EXP and N_TOK (the GROUPS layout), TOP_K, E0, NE,
// X_PER_SLOT, TN, TK (a multiple of 4), RPT (4 or 8).
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> GROUPS: array<u32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

const LX: u32 = TN / 4u;  // lanes along tokens
const LY: u32 = 256u / LX;  // lanes along rows
const TM: u32 = RPT * LY;
const TILES: u32 = (N_TOK + TN - 1u) / TN;  // list tiles per expert (worst case)

var<workgroup> ws: array<vec4<f32>, TK * TM / 4u>;  // ws[k * TM/4 + r/4][r % 4] = W[r0 + r, k0 + k]
var<workgroup> xs: array<vec4<f32>, TK * TN / 4u>;  // xs[k * TN/4 + j/4][j % 4] = x_{slot j}[k0 + k]
var<workgroup> xrow: array<u32, TN>;  // the row of X of each list entry of the tile
var<workgroup> yrow: array<u32, TN>;  // its slot: the row of Y

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = E0 + wid.y / TILES;
  let j0 = (wid.y % TILES) * TN;
  let r0 = wid.x * TM;
  let count = GROUPS[e];
  if (r0 >= RPE || j0 >= count) {
    return;  // uniform: the workgroup id and a read-only value at a uniform index
  }
  let nt = min(TN, count - j0);
  if (lid < TN) {
    let s = GROUPS[N_EXP + e * N_TOK + j0 + min(lid, nt - 1u)];  // entries past the list repeat the last
    yrow[lid] = s;
    xrow[lid] = select(s / TOP_K, s, X_PER_SLOT);
  }
  let wrow0 = (e - E0) * RPE + r0;  // the tile's first row in this part
  let tx = lid % LX;  // this lane's entries: 4 tx .. 4 tx + 3
  let ty = lid / LX;  // this lane's rows: 4 ty .. 4 ty + 3, and TM / 2 + 4 ty .. when RPT == 8
  // aI[j]: row 4 ty + I, entry 4 tx + j; bI: row TM / 2 + 4 ty + I (named vectors, not an array: see matmul.wgsl)
  var a0 = vec4<f32>(0.0);
  var a1 = vec4<f32>(0.0);
  var a2 = vec4<f32>(0.0);
  var a3 = vec4<f32>(0.0);
  var b0 = vec4<f32>(0.0);
  var b1 = vec4<f32>(0.0);
  var b2 = vec4<f32>(0.0);
  var b3 = vec4<f32>(0.0);
  workgroupBarrier();
  for (var k0 = 0u; k0 < COLS; k0 += TK) {
    // W tile: TM rows x TK/4 runs; consecutive lanes take consecutive rows (distinct banks on the stores).
    for (var idx = lid; idx < TM * TK / 4u; idx += 256u) {
      let row = idx % TM;
      let kk = 4u * (idx / TM);
      let col = k0 + kk;
      var v = vec4<f32>(0.0);
      if (r0 + row < RPE && col < COLS) {
        v = run_deq((wrow0 + row) * ROW_BYTES + (col / QK) * BLOCK_BYTES, (col % QK) / 4u);
        // Float rows of any length: zero the columns past the end (they belong to the next row).
        v = select(vec4<f32>(0.0), v, vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(COLS));
      }
      let o = kk * (TM / 4u) + row / 4u;
      let c = row % 4u;
      ws[o][c] = v.x;
      ws[o + TM / 4u][c] = v.y;
      ws[o + 2u * (TM / 4u)][c] = v.z;
      ws[o + 3u * (TM / 4u)][c] = v.w;
    }
    // X tile: TN entries x TK columns, one element per lane per pass.
    for (var idx = lid; idx < TN * TK; idx += 256u) {
      let j = idx % TN;
      let kk = idx / TN;
      var v = 0.0;
      if (k0 + kk < COLS) {
        v = X[xrow[j] * COLS + k0 + kk];
      }
      xs[kk * (TN / 4u) + j / 4u][j % 4u] = v;
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
        let w2 = ws[kk * (TM / 4u) + LY + ty];
        b0 += w2.x * x;
        b1 += w2.y * x;
        b2 += w2.z * x;
        b3 += w2.w * x;
      }
    }
    workgroupBarrier();
  }
  let row = r0 + 4u * ty;
  store_row(row, tx, nt, a0);
  store_row(row + 1u, tx, nt, a1);
  store_row(row + 2u, tx, nt, a2);
  store_row(row + 3u, tx, nt, a3);
  if (RPT == 8u) {
    store_row(row + TM / 2u, tx, nt, b0);
    store_row(row + TM / 2u + 1u, tx, nt, b1);
    store_row(row + TM / 2u + 2u, tx, nt, b2);
    store_row(row + TM / 2u + 3u, tx, nt, b3);
  }
}

// Outputs of one row for list entries 4 tx .. 4 tx + 3 (skipping rows past the expert and entries past nt).
fn store_row(row: u32, tx: u32, nt: u32, v: vec4<f32>) {
  if (row >= RPE) {
    return;
  }
  let j = 4u * tx;
  if (j < nt) {
    Y[yrow[j] * RPE + row] = v.x;
  }
  if (j + 1u < nt) {
    Y[yrow[j + 1u] * RPE + row] = v.y;
  }
  if (j + 2u < nt) {
    Y[yrow[j + 2u] * RPE + row] = v.z;
  }
  if (j + 3u < nt) {
    Y[yrow[j + 3u] * RPE + row] = v.w;
  }
}
