// Reading the f16 KV cache (ops.kv_cache, cache_type "f16"): a row (one kv head's key or value at one slot) is
// HD halves, 8 to a KvWord (16 bytes); row `row` = kv_head * CAP + slot starts at word row * KV_ROW.
// attention.wgsl reads keys and values 8 dims ("a piece") at a time through key8 / value8; the kernel that
// includes this declares kc and vc as array<KvWord>. kv_read_q8_0.wgsl is the same interface for q8_0 caches.
alias KvWord = vec4<u32>;
const KV_ROW: u32 = HD / 8u;

struct Piece8 {
  lo: vec4<f32>,  // dims 8p .. 8p+3
  hi: vec4<f32>,  // dims 8p+4 .. 8p+7
}

fn kv_piece(w: vec4<u32>) -> Piece8 {
  return Piece8(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)),
                vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)));
}

fn key8(row: u32, piece: u32) -> Piece8 {
  return kv_piece(kc[row * KV_ROW + piece]);
}

fn value8(row: u32, piece: u32) -> Piece8 {
  return kv_piece(vc[row * KV_ROW + piece]);
}
