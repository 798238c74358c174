// matvec.wgsl whose activation is a residual sum it computes itself (the prologue), so that the norm before it
// costs no dispatch of its own:
//   x = H + O * rsqrt(mean(O^2) + EPS) * NW        (a post-norm added into the stream, not stored)
//   y[ROW0 + r] = (the epilogue EPI of) W[r] . x    (matvec_lib.wgsl)
// Gemma 4's per-layer-input gate reads the stream just after the feed-forward block's post-norm is added; here
// every workgroup adds it into its own copy of the row in workgroup memory, and the layer's last norm adds the
// same sum into the stream (rms_norm.wgsl, entry then_norm_two). Each workgroup reads H, O and NW (three rows of
// COLS floats, from L2) and reduces O once: worth it for products of few workgroups (the gate: 256 rows).
// Constants: those of matvec.wgsl, and EPS; COLS * 4 bytes of workgroup memory.
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> H: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read> P: array<f32>;  // EPI 2 only; any read-only buffer otherwise
@group(0) @binding(4) var<storage, read> O: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> NW: array<vec4<f32>>;

var<workgroup> X: array<vec4<f32>, COLS / 4u>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  var ss = 0.0;
  for (var i = lid; i < COLS / 4u; i += WG) {
    let o = O[i];
    ss += dot(o, o);
  }
  let scale = inverseSqrt(workgroup_sum(ss, lid) / f32(COLS) + EPS);
  for (var i = lid; i < COLS / 4u; i += WG) {
    X[i] = H[i] + O[i] * scale * NW[i];
  }
  workgroupBarrier();
  matvec_rows(wid, lid);
}
