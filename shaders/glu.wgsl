// Gated linear unit over rows of 2N (torch.nn.functional.glu(x, dim=-1): the first half times the sigmoid of
// the second): out[r, i] = x[r, i] * sigmoid(x[r, N + i]), out [rows, N], TOTAL = rows * N values.
// Needs libs=("sigmoid_lib",). Constants: N, TOTAL, WG.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid;
  if (i < TOTAL) {
    let a = i + (i / N) * N;  // x[r, i % N], rows of 2N
    out[i] = x[a] * sigmoid(x[a + N]);
  }
}
