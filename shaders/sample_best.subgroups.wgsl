// sample_best.wgsl with subgroup maxima: the best key of a subgroup is two subgroupMax (the largest value key,
// then the largest ~id among the lanes holding it), and one barrier later every subgroup takes the best of the
// subgroups' keys the same way (each lane scans a few first), so every invocation ends with the result. One
// barrier where the plain variant takes two.
//
// The lane count of a subgroup comes from subgroupAdd(1u) (every lane is active: the caller is in uniform
// control flow), since a library function cannot take the subgroup_size builtin. Subgroups are taken to be
// contiguous, aligned ranges of local_invocation_index, as matvec.subgroups.wgsl explains.
//
// The result is the same in every invocation. Call it once per dispatch, in uniform control flow. Uses the
// kernel's WG (256).

var<workgroup> best_subgroups: array<vec2<u32>, WG / 4u>;  // one per subgroup: WebGPU subgroups have >= 4 lanes

fn subgroup_best(c: vec2<u32>) -> vec2<u32> {
  let hi = subgroupMax(c.x);
  return vec2<u32>(hi, subgroupMax(select(0u, c.y, c.x == hi)));
}

fn workgroup_best(c: vec2<u32>, lid: u32) -> vec2<u32> {
  let lanes = subgroupAdd(1u);
  let s = subgroup_best(c);
  if (lid % lanes == 0u) {
    best_subgroups[lid / lanes] = s;
  }
  workgroupBarrier();
  var b = NO_TOKEN;
  for (var j = lid % lanes; j < WG / lanes; j += lanes) {
    let o = best_subgroups[j];
    if (c_gt(o, b)) {
      b = o;
    }
  }
  return subgroup_best(b);
}
