// The best of one composite key per invocation (sample_lib.wgsl: the largest value, then the lowest id), for
// sample_argmax.wgsl; passed with libs=("sample_lib", "sample_best"). This plain variant is a two-level scan
// in workgroup memory: 16 invocations each take the best of 16 keys, then every invocation the best of those
// 16. Two barriers where a binary tree takes log2(WG) + 1; on the decode path each one adds latency.
// sample_best.subgroups.wgsl does it with subgroup maxima.
//
// The result is the same in every invocation. Call it once per dispatch, in uniform control flow (a second call
// would overwrite keys a slow invocation may still be reading). Uses the kernel's WG (256).

const BEST_GROUPS: u32 = 16u;

var<workgroup> best_keys: array<vec2<u32>, WG>;
var<workgroup> best_groups: array<vec2<u32>, BEST_GROUPS>;

fn workgroup_best(c: vec2<u32>, lid: u32) -> vec2<u32> {
  best_keys[lid] = c;
  workgroupBarrier();
  if (lid < BEST_GROUPS) {
    var b = NO_TOKEN;
    for (var q = lid * (WG / BEST_GROUPS); q < (lid + 1u) * (WG / BEST_GROUPS); q++) {
      let o = best_keys[q];
      if (c_gt(o, b)) {
        b = o;
      }
    }
    best_groups[lid] = b;
  }
  workgroupBarrier();
  var b = NO_TOKEN;
  for (var q = 0u; q < BEST_GROUPS; q++) {
    let o = best_groups[q];
    if (c_gt(o, b)) {
      b = o;
    }
  }
  return b;
}
