// F16 weights (IEEE half). See quant/f32.wgsl for the interface. A row of odd length leaves every other row
// on a 2-byte boundary, hence the ldw2 reads in run_deq; unit_deq (matvec, COLS % 8 == 0) is always aligned.
const QK: u32 = 8u;
const BLOCK_BYTES: u32 = 16u;
const UPB: u32 = 1u;
const UNIT_RUNS: u32 = 2u;

fn unit_run(u: u32, k: u32) -> u32 {
  return k;
}

fn run_deq(b: u32, r: u32) -> vec4<f32> {
  let w = ldw2(b + 8u * r);
  return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn unit_deq(b: u32, u: u32) -> array<vec4<f32>, UNIT_RUNS> {
  let i = b >> 2u;
  return array<vec4<f32>, UNIT_RUNS>(
    vec4<f32>(unpack2x16float(W[i]), unpack2x16float(W[i + 1u])),
    vec4<f32>(unpack2x16float(W[i + 2u]), unpack2x16float(W[i + 3u])));
}
