// workgroup_sum.wgsl with subgroup sums: each subgroup adds its lanes with subgroupAdd, and one barrier later
// every lane adds the subgroups' sums in a fixed order (deterministic run to run). Two barriers, where the tree
// in workgroup memory takes log2(WG) + 2; a single-workgroup norm (rms_norm.wgsl) is a chain of such sums, and
// at decode each one sits on the token's critical path.
//
// The lane count of a subgroup comes from subgroupAdd(1u) (every lane is active: the caller is in uniform
// control flow), since a library function cannot take the subgroup_size builtin. Subgroups are taken to be
// contiguous, aligned ranges of local_invocation_index, as matvec.subgroups.wgsl explains.

var<workgroup> partial: array<f32, WG>;

fn workgroup_sum(s: f32, lid: u32) -> f32 {
  let t = subgroupAdd(s);
  let lanes = subgroupAdd(1u);
  if (lid % lanes == 0u) {
    partial[lid / lanes] = t;
  }
  workgroupBarrier();
  var total = 0.0;
  for (var i = 0u; i < WG / lanes; i++) {
    total += partial[i];
  }
  workgroupBarrier();  // before a next call overwrites partial
  return total;
}
