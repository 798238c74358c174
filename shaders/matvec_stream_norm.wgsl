// The activation of matvec.wgsl formed in its prologue from the residual stream (decode, one token), so that a
// block's post-norm, its residual add and the next block's input norm cost no dispatch of their own:
//
//   s' = (s + rms_norm(d) * wd) * scale       the new stream: s the stream, d the block's output, wd its
//                                             post-norm; scale Gemma 4's layer_output_scale (HAS_SCALE)
//   x  = rms_norm(s') * wx                    NORM_X: the input norm of the block this product starts
//   x  = s'                                   otherwise (Gemma 4's per-layer input gate reads the stream)
//
// rms_norm(v) = v * rsqrt(mean(v^2) + EPS) over the COLS values. Every workgroup forms x itself, in workgroup
// memory, from the same inputs (4 rows of COLS floats, L2-resident, read at once); workgroup 0 also writes s' to
// S_OUT. S_OUT must not be S: the other workgroups may still be reading s, so the stream lives in two buffers
// and each fused product moves it from one to the other. The units then read X from workgroup memory as they
// would read the plain input (matvec_units.wgsl is unchanged).
//
// Lane `lid` holds the vec4s lid + k * WG, k < PV (<= 4) in registers (a struct of four vec4s, not a private
// array: see rms_norm.wgsl), so the prologue is one memory round trip and two workgroup sums.
// Constants: COLS (a multiple of 4), PV = ceil(COLS / 4 / WG) <= 4, EPS, HAS_SCALE, NORM_X. The scale is read
// from binding 3 (P), which a product whose epilogue takes no P leaves free.
var<workgroup> X: array<vec4<f32>, COLS / 4u>;
@group(0) @binding(4) var<storage, read> S: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> D: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> WD: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> WX: array<vec4<f32>>;  // NORM_X only; any read-only buffer otherwise
@group(0) @binding(8) var<storage, read_write> S_OUT: array<vec4<f32>>;

const XV: u32 = COLS / 4u;

struct Lane4 {
  a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>,
}

fn pv_index(lid: u32, k: u32) -> u32 {
  return min(lid + k * WG, XV - 1u);
}

fn pv_inside(lid: u32, k: u32) -> bool {
  return k < PV && lid + k * WG < XV;
}

fn s4(lid: u32, k: u32) -> vec4<f32> { return select(vec4<f32>(0.0), S[pv_index(lid, k)], pv_inside(lid, k)); }
fn d4(lid: u32, k: u32) -> vec4<f32> { return select(vec4<f32>(0.0), D[pv_index(lid, k)], pv_inside(lid, k)); }
fn wd4(lid: u32, k: u32) -> vec4<f32> { return select(vec4<f32>(0.0), WD[pv_index(lid, k)], pv_inside(lid, k)); }
fn wx4(lid: u32, k: u32) -> vec4<f32> { return select(vec4<f32>(0.0), WX[pv_index(lid, k)], pv_inside(lid, k)); }

fn squares(r: Lane4) -> f32 {
  return (dot(r.a, r.a) + dot(r.b, r.b)) + (dot(r.c, r.c) + dot(r.d, r.d));
}

fn put_x(lid: u32, k: u32, v: vec4<f32>) {
  if (pv_inside(lid, k)) {
    X[lid + k * WG] = v;
  }
}

fn put_stream(lid: u32, k: u32, v: vec4<f32>) {
  if (pv_inside(lid, k)) {
    S_OUT[lid + k * WG] = v;
  }
}

// Called by every lane of the workgroup (uniform control flow) before the product reads X.
fn prologue(wi: u32, lid: u32) {
  // Every load at once: the block's output, the stream, both norm weights (and the scale).
  let d = Lane4(d4(lid, 0u), d4(lid, 1u), d4(lid, 2u), d4(lid, 3u));
  let s = Lane4(s4(lid, 0u), s4(lid, 1u), s4(lid, 2u), s4(lid, 3u));
  let wd = Lane4(wd4(lid, 0u), wd4(lid, 1u), wd4(lid, 2u), wd4(lid, 3u));
  var wx = Lane4(vec4<f32>(1.0), vec4<f32>(1.0), vec4<f32>(1.0), vec4<f32>(1.0));
  if (NORM_X) {
    wx = Lane4(wx4(lid, 0u), wx4(lid, 1u), wx4(lid, 2u), wx4(lid, 3u));
  }
  var post = 1.0;
  if (HAS_SCALE) {
    post = P[0];
  }
  let rd = inverseSqrt(workgroup_sum(squares(d), lid) / f32(COLS) + EPS);
  let n = Lane4((s.a + d.a * rd * wd.a) * post, (s.b + d.b * rd * wd.b) * post, (s.c + d.c * rd * wd.c) * post,
                (s.d + d.d * rd * wd.d) * post);
  if (wi == 0u) {
    put_stream(lid, 0u, n.a);
    put_stream(lid, 1u, n.b);
    put_stream(lid, 2u, n.c);
    put_stream(lid, 3u, n.d);
  }
  var rx = 1.0;
  if (NORM_X) {
    rx = inverseSqrt(workgroup_sum(squares(n), lid) / f32(COLS) + EPS);
  }
  put_x(lid, 0u, n.a * rx * wx.a);
  put_x(lid, 1u, n.b * rx * wx.b);
  put_x(lid, 2u, n.c * rx * wx.c);
  put_x(lid, 3u, n.d * rx * wx.d);
  workgroupBarrier();
}
