// out = min(max(x, lo), hi) elementwise over TOTAL f32 values, with (lo, hi) = (limits[2 PAIR], limits[2 PAIR + 1])
// read at run time: a clippable linear's (in_min, in_max, out_min, out_max), PAIR 0 for its input and 1 for its
// output, so one pipeline per shape serves every layer.
// A limit whose exponent bits are all ones (+-inf, NaN) means "no limit on that side" and leaves values as they
// are, bit for bit; the files store +-inf or +-FLT_MAX for an unclipped linear, and FLT_MAX passes every finite
// value through max/min unchanged anyway. The test is on the bits: WGSL lets implementations assume floats are
// finite, so a max() with -inf could compile to anything, while integer compares are exact.
//   entry `main`:    out = clamp(x) (distinct buffers).
//   entry `inplace`: x = clamp(x) (WebGPU forbids one buffer bound both read-only and writable).
// Constants: TOTAL, PAIR, WG.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> limits: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@group(0) @binding(0) var<storage, read_write> xio: array<f32>;

const EXP_MASK: u32 = 0x7f800000u;

fn is_limit(bits: u32) -> bool {
  return (bits & EXP_MASK) != EXP_MASK;
}

fn clip(v: f32) -> f32 {
  let lo = limits[2u * PAIR];
  let hi = limits[2u * PAIR + 1u];
  var y = v;
  if (is_limit(lo)) {
    y = max(y, bitcast<f32>(lo));
  }
  if (is_limit(hi)) {
    y = min(y, bitcast<f32>(hi));
  }
  return y;
}

fn thread_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    out[i] = clip(x[i]);
  }
}

@compute @workgroup_size(WG)
fn inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    xio[i] = clip(xio[i]);
  }
}
