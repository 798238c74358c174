// x *= s in place over TOTAL f32 elements (Gemma 4's layer_output_scale scales the whole residual stream).
//   entry `main`:     s = the first element of a GPU array (a weight stays on the GPU; no readback at load).
//   entry `by_const`: s = the constant S.
// Constants: TOTAL, S, WG.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> s: array<f32>;

fn thread_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    x[i] *= s[0];
  }
}

@compute @workgroup_size(WG)
fn by_const(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    x[i] *= S;
  }
}
