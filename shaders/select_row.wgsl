// out[0, :] = x[step.n_tokens - 1, :]: the last token of a run, whose logits we need after a prefill chunk
// (the chunk's real length is only known per run, from the Step uniform). Constants: N (row length), WG.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i < N) {
    out[i] = x[(step.n_tokens - 1u) * N + i];
  }
}
