// Writing one row of the f16 KV cache (layout: kv_read_f16.wgsl, which must be included too) from HD values
// the including kernel has staged in workgroup memory and gives through `fn staged(i: u32) -> f32`. Every
// thread of the workgroup calls these (WG threads); the caller puts a barrier between staging and storing.
fn staged8(p: u32) -> vec4<u32> {
  let o = 8u * p;
  return vec4<u32>(to_f16x2(vec2<f32>(staged(o), staged(o + 1u))), to_f16x2(vec2<f32>(staged(o + 2u), staged(o + 3u))),
                   to_f16x2(vec2<f32>(staged(o + 4u), staged(o + 5u))), to_f16x2(vec2<f32>(staged(o + 6u), staged(o + 7u))));
}

// store_key and store_value differ only in the buffer: WGSL takes no pointer to a storage buffer as an argument
// (without the unrestricted_pointer_parameters extension, which not every browser has).
fn store_key(row: u32, lid: u32) {
  for (var p = lid; p < KV_ROW; p += WG) {
    kc[row * KV_ROW + p] = staged8(p);
  }
}

fn store_value(row: u32, lid: u32) {
  for (var p = lid; p < KV_ROW; p += WG) {
    vc[row * KV_ROW + p] = staged8(p);
  }
}
