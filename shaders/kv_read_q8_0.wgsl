// Reading the q8_0 KV cache (ops.kv_cache, cache_type "q8_0"): a row (one kv head's key or value at one slot)
// is HD / 32 blocks of 32 dims, each 32 signed bytes q and a scale d (value = d * q, as llama.cpp's q8_0), laid
// out per row as [HD / 4 words of q, four to a word, lowest byte first][HD / 32 f32 scales]: KV_ROW words, the
// row contiguous in memory. The scale stays f32 (llama.cpp rounds it to f16): a block's scale would otherwise
// share a word with its neighbour's, and two workgroup threads storing them would race.
// Same interface as kv_read_f16.wgsl: key8 / value8 give dims 8p .. 8p+7 of row `row` = kv_head * CAP + slot.
alias KvWord = u32;
const KV_QWORDS: u32 = HD / 4u;          // quant words of a row
const KV_ROW: u32 = KV_QWORDS + HD / 32u;

struct Piece8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// The four signed bytes of w, lowest first (shift each to the top, then arithmetic-shift it back).
fn kv_i8x4(w: u32) -> vec4<f32> {
  let b = vec4<i32>(bitcast<i32>(w << 24u), bitcast<i32>(w << 16u), bitcast<i32>(w << 8u), bitcast<i32>(w));
  return vec4<f32>(b >> vec4<u32>(24u));
}

fn key8(row: u32, piece: u32) -> Piece8 {
  let w = row * KV_ROW;
  let d = bitcast<f32>(kc[w + KV_QWORDS + piece / 4u]);
  return Piece8(kv_i8x4(kc[w + 2u * piece]) * d, kv_i8x4(kc[w + 2u * piece + 1u]) * d);
}

fn value8(row: u32, piece: u32) -> Piece8 {
  let w = row * KV_ROW;
  let d = bitcast<f32>(vc[w + KV_QWORDS + piece / 4u]);
  return Piece8(kv_i8x4(vc[w + 2u * piece]) * d, kv_i8x4(vc[w + 2u * piece + 1u]) * d);
}
