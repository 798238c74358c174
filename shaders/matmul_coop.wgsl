// Y[t, ROW0 + r] (+)= SCALE * sum_c W[r, c] * X[t, c] for N_TOK tokens: matmul.wgsl's product, with the
// tile's multiply-adds on the GPU's matrix units (cooperative matrices: naga's `wgpu_cooperative_matrix`
// extension over Vulkan's VK_KHR_cooperative_matrix). Native only: no browser offers WGSL matrices yet, so
// ops/matmul.py picks this kernel only on a device with the feature and keeps matmul.wgsl everywhere else.
//
// Numerics: each k-step dequantises a TM x TK tile of W and loads a TN x TK tile of X into workgroup memory as
// f16 (X clamped to f16's range), and the matrix units multiply those f16 values and accumulate in f32. So
// every weight and every activation is rounded once to 11 significant bits (a relative 2^-11 each); the sums
// are f32 as in matmul.wgsl. llama.cpp's Vulkan matrix-core path makes the same choice.
//
// Tiling: the workgroup is SGR x SGT subgroups; each subgroup owns a 32 x 32 block of (rows, tokens) as 2 x 2
// fragments of 16 x 16, so TM = 32 SGR rows and TN = 32 SGT tokens. A 16-column slice of the tiles gives a
// subgroup 2 A and 2 B fragment loads for 4 matrix multiply-adds. Both tiles are row-major in k with a stride
// of TK + 8 halves (80 bytes), so that the 16 rows of a fragment load fall in different banks.
// The epilogue goes through workgroup memory (one 16 x 16 f32 fragment per subgroup at a time), where every
// lane applies matmul.wgsl's masks, SCALE and ACC: a fragment store straight to Y would write rows and tokens
// past the product's end.
//
// Entry points, split K (KSPLIT, KC, SPLIT_STRIDE) and the other constants are matmul.wgsl's, except RPT and
// TPT (here SGR and SGT); TK is 32. WG = 32 x SGR x SGT lanes: ops/matmul.py takes this kernel only where every
// subgroup has 32 lanes.
enable f16;
enable wgpu_cooperative_matrix;

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

const TM: u32 = 32u * SGR;
const TN: u32 = 32u * SGT;
const TK: u32 = 32u;
const LD: u32 = TK + 8u;
const WG: u32 = 32u * SGR * SGT;
const RG: u32 = 4u;          // W runs (of 4 columns) a lane group takes per row: 16 weights of one block
const F16_MAX: f32 = 65504.0;

var<workgroup> ws: array<f16, TM * LD>;  // ws[r * LD + k] = W[r0 + r, k0 + k]
var<workgroup> xs: array<f16, TN * LD>;  // xs[t * LD + k] = X[t0 + t, k0 + k]
var<workgroup> cs: array<f32, SGR * SGT * 256u>;  // subgroup s's fragment: cs[256 s + 16 t + r] (column-major)

@group(0) @binding(3) var<uniform> step: Step;  // entry `run` only

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_id) sg: u32) {
  tile(wid, lid, sg, N_TOK);
}

@compute @workgroup_size(WG)
fn run(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
       @builtin(subgroup_id) sg: u32) {
  let n_tok = min(N_TOK, step.n_tokens);
  if (wid.y * TN >= n_tok) {
    return;  // the whole workgroup: uniform control flow
  }
  tile(wid, lid, sg, n_tok);
}

fn tile(wid: vec3<u32>, lid: u32, sg: u32, n_tok: u32) {
  let r0 = wid.x * TM;
  let t0 = wid.y * TN;
  let kb = wid.z * KC;
  let ke = min(COLS, kb + KC);
  let base = wid.z * SPLIT_STRIDE;
  let fr = 32u * (sg % SGR);  // this subgroup's rows fr .. fr + 31 of the tile, and tokens ft .. ft + 31
  let ft = 32u * (sg / SGR);
  var c00 = coop_mat16x16<f32, C>();  // rows fr + 16 i, tokens ft + 16 j
  var c01 = coop_mat16x16<f32, C>();
  var c10 = coop_mat16x16<f32, C>();
  var c11 = coop_mat16x16<f32, C>();
  for (var k0 = kb; k0 < ke; k0 += TK) {
    // W tile: TM rows x 8 runs; a warp's lanes take 4 neighbouring runs of 8 rows (as matmul.wgsl).
    for (var i = 0u; i < TM * (TK / 4u) / WG; i++) {
      let idx = lid + WG * i;
      let g = idx / RG;
      let row = g % TM;
      let kk = 4u * (RG * (g / TM) + idx % RG);
      let col = k0 + kk;
      var v = vec4<f32>(0.0);
      if (r0 + row < ROWS && col < ke) {
        v = run_deq((r0 + row) * ROW_BYTES + (col / QK) * BLOCK_BYTES, (col % QK) / 4u);
        v = select(vec4<f32>(0.0), v, vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(ke));
      }
      let h = vec4<f16>(v);
      let o = row * LD + kk;
      ws[o] = h.x;
      ws[o + 1u] = h.y;
      ws[o + 2u] = h.z;
      ws[o + 3u] = h.w;
    }
    // X tile: a warp reads one token's 32 consecutive columns (one cache line).
    for (var i = 0u; i < TN * TK / WG; i++) {
      let idx = lid + WG * i;
      let t = idx / TK;
      let kk = idx % TK;
      var v = 0.0;
      if (t0 + t < n_tok && k0 + kk < ke) {
        v = clamp(X[(t0 + t) * COLS + k0 + kk], -F16_MAX, F16_MAX);
      }
      xs[t * LD + kk] = f16(v);
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk += 16u) {
      let a0 = coopLoadT<coop_mat16x16<f16, A>>(&ws[fr * LD + kk], LD);
      let a1 = coopLoadT<coop_mat16x16<f16, A>>(&ws[(fr + 16u) * LD + kk], LD);
      let b0 = coopLoad<coop_mat16x16<f16, B>>(&xs[ft * LD + kk], LD);
      let b1 = coopLoad<coop_mat16x16<f16, B>>(&xs[(ft + 16u) * LD + kk], LD);
      c00 = coopMultiplyAdd(a0, b0, c00);
      c01 = coopMultiplyAdd(a0, b1, c01);
      c10 = coopMultiplyAdd(a1, b0, c10);
      c11 = coopMultiplyAdd(a1, b1, c11);
    }
    workgroupBarrier();
  }
  // Epilogue: fragment (i, j) of every subgroup at once, through cs; every lane then writes 256 SGR SGT / WG
  // = 8 outputs, consecutive lanes consecutive rows of one token (coalesced). (Matrices are not passed to
  // functions: the stores stay here.)
  coopStore(c00, &cs[256u * sg], 16u);
  flush(lid, r0, t0, base, n_tok);
  coopStore(c01, &cs[256u * sg], 16u);
  flush(lid, r0, t0 + 16u, base, n_tok);
  coopStore(c10, &cs[256u * sg], 16u);
  flush(lid, r0 + 16u, t0, base, n_tok);
  coopStore(c11, &cs[256u * sg], 16u);
  flush(lid, r0 + 16u, t0 + 16u, base, n_tok);
}

// Writes every subgroup's fragment in cs (subgroup s's at rows r + 32 (s % SGR), tokens t + 32 (s / SGR))
// into Y, with matmul.wgsl's masks, SCALE and ACC.
fn flush(lid: u32, r: u32, t: u32, base: u32, n_tok: u32) {
  workgroupBarrier();
  for (var i = 0u; i < 256u * SGR * SGT / WG; i++) {
    let idx = lid + WG * i;
    let s = idx / 256u;
    let row = r + 32u * (s % SGR) + idx % 16u;
    let tok = t + 32u * (s / SGR) + (idx / 16u) % 16u;
    if (row < ROWS && tok < n_tok) {
      let o = base + tok * OUT_STRIDE + ROW0 + row;
      var y = SCALE * cs[idx];
      if (ACC) {
        y += Y[o];
      }
      Y[o] = y;
    }
  }
  workgroupBarrier();
}
