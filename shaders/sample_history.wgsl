// The sampled-token history ring the repetition penalty reads (sampling.py), appended to by the kernels that
// write the token (sample_draw.wgsl, sample_argmax.wgsl `finish`). Uses the kernel's binding `hist`:
// [count, next, ring of arrayLength - 2 ids]. One lane calls it.
fn history_append(tok: u32) {
  let hcap = arrayLength(&hist) - 2u;
  let next = hist[1] % hcap;
  hist[2u + next] = tok;
  hist[1] = (next + 1u) % hcap;
  hist[0] = min(hist[0] + 1u, hcap);
}
