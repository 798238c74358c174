// F16 weights (IEEE half). See quant/f32.wgsl for the interface. A row of odd length leaves every other row
// on a 2-byte boundary, hence the ldw2 reads in run_deq; unit_dot (matvec, COLS % 8 == 0) is always aligned.
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

fn unit_dot(b: u32, u: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, xs: vec4<f32>) -> f32 {
  let i = b >> 2u;
  return dot(vec4<f32>(unpack2x16float(W[i]), unpack2x16float(W[i + 1u])), x0)
       + dot(vec4<f32>(unpack2x16float(W[i + 2u]), unpack2x16float(W[i + 3u])), x1);
}
