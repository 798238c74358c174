// The KV cache's f16 packing, shared by kv_store.wgsl and kv_write_f16.wgsl.

// f16 overflows to +-inf past 65504 (and pack2x16float is undefined there); an inf key would turn a whole
// softmax row into NaN, so saturate instead.
fn to_f16x2(a: vec2<f32>) -> u32 {
  return pack2x16float(clamp(a, vec2<f32>(-65504.0), vec2<f32>(65504.0)));
}
