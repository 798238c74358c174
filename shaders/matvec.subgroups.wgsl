// matvec.wgsl with the reduction of each row group done by subgroup shuffles: log2(min(LPR, subgroup size))
// register exchanges instead of log2(LPR) workgroup barriers, which matters for short rows (1536 columns: a
// few units per lane). See matvec.wgsl for the layout and the constants.
//
// The butterfly pairs lane l with lane l ^ o (o < LPR), and slot lid / m collects the partial of each chunk
// of m lanes; both assume that each subgroup is a contiguous, aligned range of local_invocation_index. WGSL
// does not promise that, but every implementation lays out one-dimensional workgroups that way (Vulkan,
// Metal, D3D12, lavapipe, SwiftShader). The sum order is fixed, so results are deterministic run to run.
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read> P: array<f32>;  // EPI 2 only; any read-only buffer otherwise

const UPR: u32 = (COLS / QK) * UPB;
const G: u32 = WG / LPR;
const MAX_CHUNKS: u32 = (WG + 3u) / 4u;  // chunks of m >= 4 lanes: WebGPU subgroups have at least 4

var<workgroup> red: array<vec4<f32>, MAX_CHUNKS>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_size) sg_size: u32) {
  let wi = wid.x + wid.y * GRID_X;
  prologue(wi, lid);  // the activation X (matvec_x.wgsl or matvec_stream_norm.wgsl)
  let wrow = wi * (G * RPG);
  if (wrow >= OUT_ROWS) {
    return;
  }
  let li = lid % LPR;
  let row0 = wrow + (lid / LPR) * RPG;
  let b = row_offsets(row0);
  var acc = vec4<f32>(0.0);
  for (var u = li; u < UPR; u += LPR) {
    acc += unit_rows(u, b);
  }
  // Butterfly over chunks of m lanes (a whole row group when it fits in a subgroup).
  let m = min(LPR, sg_size);
  for (var o = m / 2u; o > 0u; o >>= 1u) {
    acc += subgroupShuffleXor(acc, o);
  }
  if (lid % m == 0u) {
    red[lid / m] = acc;
  }
  workgroupBarrier();
  if (li == 0u && row0 < OUT_ROWS) {
    var t = red[lid / m];
    for (var i = 1u; i < LPR / m; i++) {
      t += red[lid / m + i];
    }
    store(row0, t);
  }
}
