// A per-channel scale and shift, then an activation, over the real rows of a time-major sequence:
//   out[t, c] = act(x[t, c] * coeffs[c] + coeffs[C + c])   for t < n = min(step.n_tokens, ROWS)
//   out[t, c] = 0                                           for n <= t < ROWS
// x, out: f32 [ROWS, C]; coeffs: f32 [2C], as instance_norm_coeffs.wgsl writes them (AdaIN1d = x * scale +
// shift). ACT 0: none; 1: LeakyReLU (u >= 0 ? u : SLOPE u); 2: Snake1d with alpha[c] (snake_lib.wgsl, in libs).
// The product and the sum are one fma (one or two roundings, as the implementation fuses them or not).
// Entry `main`: x and out distinct. Entry `inplace`: x = that (one buffer; each thread reads and writes only its
// own element). One thread per element; neighbouring threads on neighbouring channels.
// Constants: C, ROWS, TOTAL (= ROWS * C), ACT, SLOPE, WG.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> coeffs: array<f32>;
@group(0) @binding(2) var<storage, read> alpha: array<f32>;  // ACT 2; else any read-only buffer
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@group(0) @binding(0) var<storage, read_write> xio: array<f32>;

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid;
}

fn act(v: f32, i: u32) -> f32 {
  let c = i % C;
  let u = fma(v, coeffs[c], coeffs[C + c]);
  if (ACT == 1u) {
    return select(SLOPE * u, u, u >= 0.0);
  }
  if (ACT == 2u) {
    return snake(u, alpha[c]);
  }
  return u;
}

fn is_real(i: u32) -> bool {
  return i / C < min(step.n_tokens, ROWS);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = element(wid, nwg, lid);
  if (i < TOTAL) {
    out[i] = select(0.0, act(x[i], i), is_real(i));
  }
}

@compute @workgroup_size(WG)
fn inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = element(wid, nwg, lid);
  if (i < TOTAL) {
    xio[i] = select(0.0, act(xio[i], i), is_real(i));
  }
}
