// F32 weights, through the interface every quant/<type>.wgsl file provides to the weight kernels:
//   QK           elements per block (float types use blocks of 8 so that a matvec unit is 32 B)
//   BLOCK_BYTES  bytes per block
//   UPB          matvec units per block; a unit is what one lane handles per step: UNIT_RUNS (2 or 4) runs
//                of 4 consecutive weights that share their loads (quants, high bits, scales)
//   unit_run(u, k)   index, in runs of 4 within the block, of run k of unit u
//   unit_dot(b, u, x0, x1, x2, x3, xs)   sum over the runs k of unit u of the block at byte offset b of
//                dot(weights of run k, xk); xs holds the sums of x0..x3's components, so that a type whose
//                weights are a * q + c needs one multiply-add per run for c instead of one per weight.
//                Runs past UNIT_RUNS get zeros. No arrays cross this interface: they would force private
//                memory with dynamic indexing, which GPUs compile to slow local memory.
//   run_deq(b, r)    elements 4r..4r+3 of the block at byte offset b (tiled matmul, embed)
// Float rows may have any length: the kernels mask columns past the row, and rows start at row * ROW_BYTES,
// which the host computes from the true length. The matvec path is only used when COLS % 8 == 0, where
// every block is aligned; run_deq reads whole words wherever it is called.
const QK: u32 = 8u;
const BLOCK_BYTES: u32 = 32u;
const UPB: u32 = 1u;
const UNIT_RUNS: u32 = 2u;

fn unit_run(u: u32, k: u32) -> u32 {
  return k;
}

fn run_deq(b: u32, r: u32) -> vec4<f32> {
  let i = (b >> 2u) + 4u * r;
  return bitcast<vec4<f32>>(vec4<u32>(W[i], W[i + 1u], W[i + 2u], W[i + 3u]));
}

fn unit_dot(b: u32, u: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, xs: vec4<f32>) -> f32 {
  return dot(run_deq(b, 0u), x0) + dot(run_deq(b, 1u), x1);
}
