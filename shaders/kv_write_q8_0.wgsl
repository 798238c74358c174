// Writing one row of the q8_0 KV cache (layout: kv_read_q8_0.wgsl, which must be included too) from HD values
// the including kernel has staged in workgroup memory and gives through `fn staged(i: u32) -> f32`. A thread per
// block quantises as llama.cpp's quantize_row_q8_0 does: d = max|x| / 127, q = round(x / d) (0 for an all-zero
// block). Every thread of the workgroup calls these (WG threads); the caller puts a barrier between staging
// and storing.
const KV_BLOCKS: u32 = HD / 32u;

fn kv_scale(b: u32) -> f32 {
  var amax = 0.0;
  for (var i = 0u; i < 32u; i++) {
    amax = max(amax, abs(staged(32u * b + i)));
  }
  return amax / 127.0;
}

// Four values from o on, times id, rounded half away from zero (C's roundf) into signed bytes, lowest first.
fn kv_q8x4(o: u32, id: f32) -> u32 {
  let x = vec4<f32>(staged(o), staged(o + 1u), staged(o + 2u), staged(o + 3u)) * id;
  let q = vec4<i32>(sign(x) * floor(abs(x) + 0.5));
  let b = vec4<u32>(bitcast<vec4<u32>>(clamp(q, vec4<i32>(-127), vec4<i32>(127))) & vec4<u32>(0xFFu));
  return b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
}

// store_key and store_value differ only in the buffer: WGSL takes no pointer to a storage buffer as an argument
// (without the unrestricted_pointer_parameters extension, which not every browser has).
fn store_key(row: u32, lid: u32) {
  for (var b = lid; b < KV_BLOCKS; b += WG) {
    let d = kv_scale(b);
    let id = select(0.0, 1.0 / d, d > 0.0);
    for (var j = 0u; j < 8u; j++) {
      kc[row * KV_ROW + 8u * b + j] = kv_q8x4(32u * b + 4u * j, id);
    }
    kc[row * KV_ROW + KV_QWORDS + b] = bitcast<u32>(d);
  }
}

fn store_value(row: u32, lid: u32) {
  for (var b = lid; b < KV_BLOCKS; b += WG) {
    let d = kv_scale(b);
    let id = select(0.0, 1.0 / d, d > 0.0);
    for (var j = 0u; j < 8u; j++) {
      vc[row * KV_ROW + 8u * b + j] = kv_q8x4(32u * b + 4u * j, id);
    }
    vc[row * KV_ROW + KV_QWORDS + b] = bitcast<u32>(d);
  }
}
