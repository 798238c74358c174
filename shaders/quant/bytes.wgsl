// Byte-level reads of raw GGUF weight bytes, shared by the per-type dequantisers (quant/<type>.wgsl).
//
// Every weight kernel declares its weight binding as `W: array<u32>`; WGSL module-scope declarations are
// order-independent, so these helpers can name it even though they are prepended before the kernel.
//
// GGML blocks are packed back to back and their strides are often not multiples of 4 (Q8_0: 34 B, Q4_0: 18,
// Q5_0: 22, Q6_K: 210), so a field may start at any even byte. Every GGML block size is even and every part
// of a split weight starts on a word boundary (Device.upload_rows), so every block starts on an even byte and
// a read never has to handle more than a 2-byte misalignment.

// The little-endian word at byte offset `b` (b even). Both aligned words are loaded and spliced with a select
// rather than a branch: neighbouring lanes usually hold blocks of both alignments (34 B strides alternate),
// so a branch would diverge, while the second load hits the same or the next cache line. At the very end of
// a buffer the second load is out of range; WebGPU clamps it to the buffer and the select discards it.
fn ldw(b: u32) -> u32 {
  let i = b >> 2u;
  let lo = W[i];
  let hi = W[i + 1u];
  return select(lo, (lo >> 16u) | (hi << 16u), (b & 2u) != 0u);
}

// Two consecutive words at byte offset `b` (b even): three loads instead of four.
fn ldw2(b: u32) -> vec2<u32> {
  let i = b >> 2u;
  let w0 = W[i];
  let w1 = W[i + 1u];
  let w2 = W[i + 2u];
  let odd = vec2<u32>((w0 >> 16u) | (w1 << 16u), (w1 >> 16u) | (w2 << 16u));
  return select(vec2<u32>(w0, w1), odd, (b & 2u) != 0u);
}

// The f16 at byte offset `b` (b even) as f32. unpack2x16float is core WGSL: no shader-f16 needed.
fn f16_at(b: u32) -> f32 {
  return unpack2x16float(W[b >> 2u] >> ((b & 2u) * 8u)).x;
}

// The byte at offset `b`, zero-extended.
fn u8_at(b: u32) -> u32 {
  return (W[b >> 2u] >> ((b & 3u) * 8u)) & 0xFFu;
}

// Integers become floats without integer-to-float conversions, which run at a fraction of the FMA rate on
// most GPUs (an eighth on Hopper): OR-ing an integer n < 2^23 into the mantissa of 2^23 (bits 0x4B000000)
// gives the float 2^23 + n exactly, and subtracting 2^23 is exact. (On the H100 both forms measured alike,
// as the integer work of extracting the quants dominates; this one keeps conversions off the critical unit.)
const MAGIC: u32 = 0x4B000000u;
const FMAGIC: f32 = 8388608.0;

// The four bytes of `w` as unsigned values, lowest byte first.
fn u8x4(w: u32) -> vec4<f32> {
  let m = vec4<u32>(w & 0xFFu, (w >> 8u) & 0xFFu, (w >> 16u) & 0xFFu, w >> 24u) | vec4<u32>(MAGIC);
  return bitcast<vec4<f32>>(m) - FMAGIC;
}

// The four bytes of `w` as signed (two's complement) values, lowest byte first: flipping the sign bit maps
// b to b + 128 as an unsigned byte; the subtraction removes 2^23 + 128 at once (exact).
fn i8x4(w: u32) -> vec4<f32> {
  let v = w ^ 0x80808080u;
  let m = vec4<u32>(v & 0xFFu, (v >> 8u) & 0xFFu, (v >> 16u) & 0xFFu, v >> 24u) | vec4<u32>(MAGIC);
  return bitcast<vec4<f32>>(m) - (FMAGIC + 128.0);
}

const NIB: u32 = 0x0F0F0F0Fu;  // the low nibble of each byte
