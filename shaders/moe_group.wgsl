// The (token, slot) pairs of a batch grouped by expert, so that the expert kernels read each expert's weights
// once for all of its tokens (prefill, a diffusion canvas). One workgroup: from IDS [N_TOK * TOP_K] (slot
// s = t * TOP_K + k chose expert IDS[s]) write GROUPS = N_EXP counts, then N_EXP lists of N_TOK slots each:
// the slots of expert e at GROUPS[N_EXP + e * N_TOK ..][.. count]. A token picks an expert at most once, so
// N_TOK entries always suffice (a repeated expert beyond that is dropped; ids of N_EXP or more are skipped).
//
// Positions come from workgroup atomics, so the order within a list varies run to run. Nothing downstream
// depends on it: every output element is one lane's sum over the columns, whatever the tile position of its
// token (moe_matmul.wgsl), and the experts of a token are combined in slot order (moe_combine.wgsl).
// Constants: N_EXP, N_TOK, TOP_K, WG.
@group(0) @binding(0) var<storage, read> IDS: array<u32>;
@group(0) @binding(1) var<storage, read_write> GROUPS: array<u32>;

var<workgroup> count: array<atomic<u32>, N_EXP>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  for (var e = lid; e < N_EXP; e += WG) {
    atomicStore(&count[e], 0u);
  }
  workgroupBarrier();
  for (var s = lid; s < N_TOK * TOP_K; s += WG) {
    let e = IDS[s];
    if (e < N_EXP) {
      let p = atomicAdd(&count[e], 1u);
      if (p < N_TOK) {
        GROUPS[N_EXP + e * N_TOK + p] = s;
      }
    }
  }
  workgroupBarrier();
  for (var e = lid; e < N_EXP; e += WG) {
    GROUPS[e] = min(atomicLoad(&count[e]), N_TOK);
  }
}
