// Gemma 4 per-layer embedding gate for layer LAYER: out[t, i] = gelu_tanh(gate[t, i]) * ple[t, LAYER * D + i],
// where gate = W_inp_gate h is [MAXT, D] and ple holds every layer's per-layer input, [MAXT, N_LAYERS * D].
// Constants: D (per-layer width, 256 on E2B/E4B), LAYER, N_LAYERS, MAXT, WG.
@group(0) @binding(0) var<storage, read> gate: array<f32>;
@group(0) @binding(1) var<storage, read> ple: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i < MAXT * D) {
    let t = i / D;
    let j = i % D;
    out[i] = gelu_tanh(gate[i]) * ple[(t * N_LAYERS + LAYER) * D + j];
  }
}
