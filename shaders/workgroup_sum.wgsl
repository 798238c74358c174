// A workgroup's sum of one f32 per lane, by a tree in workgroup memory; shared by rms_norm.wgsl,
// attention_inputs.wgsl and attention_decode_inputs.wgsl. Uses the kernel's WG (a power of two). Call it in
// uniform control flow.

var<workgroup> partial: array<f32, WG>;

fn workgroup_sum(s: f32, lid: u32) -> f32 {
  partial[lid] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lid < stride) {
      partial[lid] += partial[lid + stride];
    }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier();  // before a next call overwrites partial
  return total;
}
