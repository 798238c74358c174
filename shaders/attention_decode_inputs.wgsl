// attention.wgsl for one token (decode), with attention_inputs.wgsl's work done inside it: a decode step is a
// chain of dependent dispatches, each costing a launch and a barrier whatever its size, and this saves one per
// layer. Every workgroup forms its own query tile from the token's [q | k | v] projection row:
//   q = rope(rms_norm(q_lin) * qn) * SCALE        (SCALE folded into the norm's factor: RoPE is linear)
// and the one workgroup whose keys include the token's own position (the last split) first stores the token's
//   k = rope(rms_norm(k_lin) * kn)   and   v = rms_norm(v_lin) (V_NORM) or v_lin
// into the caches at slot step.pos % CAP, as f16, then reads them back like any other key: storageBarrier makes
// a workgroup's own stores visible to its invocations, and no other workgroup reads that slot (its key is the
// newest; in a ring it overwrites a key older than the window). Layers reading another layer's cache (no
// HAS_KV) only form queries. RoPE and the norms as in attention_inputs.wgsl; the cache layout as kv_store.wgsl.
// Needs MAXT == 1, one row tile (R >= G), and R * WG >= HD (the key passes through `ps`, the value through `vs`:
// HD * 4 + WG * 8 bytes of workgroup memory more than attention.wgsl's).
// Constants (besides attention.wgsl's): HAS_KV, K_OFF, V_OFF (offsets of the kv heads in the row, multiples of 4),
// V_NORM, NORM_EPS (the norms' epsilon), NROT (even, <= HD), FF, LOG2_BASE, FREQ_SCALE.
@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> kc: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> vc: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> qn: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> kn: array<vec4<f32>>;  // HAS_KV; any read-only buffer otherwise
@group(0) @binding(8) var<storage, read> ff: array<f32>;        // FF; any read-only buffer otherwise

const HALF: u32 = NROT / 2u;
const TPR: u32 = WG / R;  // threads per query row in the norm

// (cos, sin) of pair i's angle at position pos.
fn angle(pos: u32, i: u32) -> vec2<f32> {
  var factor = 1.0;
  if (FF) {
    factor = ff[i];
  }
  return cos_sin(pos, inv_freq(i, NROT) * FREQ_SCALE / factor);
}

var<workgroup> vs: array<f32, HD>;             // the token's value (the workgroup that stores it)
var<workgroup> kv_sums: array<vec2<f32>, WG>;  // the key's and the value's sums of squares

// 8 halves in 16 bytes, as a cache row holds them.
fn pack8(a: vec4<f32>, b: vec4<f32>) -> vec4<u32> {
  return vec4<u32>(to_f16x2(a.xy), to_f16x2(a.zw), to_f16x2(b.xy), to_f16x2(b.zw));
}

// Every load is issued in one pass (the query rows, and for the storing workgroup the key and value rows, each
// times its norm weight, which commutes with the norm's factor), then one tree reduces all the sums at once:
// the decode chain waits on one memory round trip and log2(WG) barriers here, not one of each per vector.
fn load_tile(x: u32, kvh: u32, kb: u32, ke: u32, lid: u32) {
  let pos = step.pos;
  let own = HAS_KV && kb <= pos && pos < ke;  // this workgroup stores the token's key and value
  // Row r of the tile is q head kvh * G + x * R + r of the one token; TPR threads take it.
  let r = lid / TPR;
  let sub = lid % TPR;
  let live = x * R + r < n_rows();
  let src = q_row(x * R + r, kvh) * HD4;
  var ss = 0.0;
  for (var i = sub; i < HD4; i += TPR) {
    var v = vec4<f32>(0.0);
    if (live) {
      v = qkv[src + i];
    }
    ss += dot(v, v);
    qs[r * HD4 + i] = v * qn[i];
  }
  red[lid] = ss;
  var kv = vec2<f32>(0.0);
  if (own) {
    let ksrc = K_OFF / 4u + kvh * HD4;
    let vsrc = V_OFF / 4u + kvh * HD4;
    for (var i = lid; i < HD4; i += WG) {
      let k = qkv[ksrc + i];
      let v = qkv[vsrc + i];
      kv += vec2<f32>(dot(k, k), dot(v, v));
      let kw = k * kn[i];
      ps[4u * i] = kw.x;
      ps[4u * i + 1u] = kw.y;
      ps[4u * i + 2u] = kw.z;
      ps[4u * i + 3u] = kw.w;
      vs[4u * i] = v.x;
      vs[4u * i + 1u] = v.y;
      vs[4u * i + 2u] = v.z;
      vs[4u * i + 3u] = v.w;
    }
  }
  kv_sums[lid] = kv;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s /= 2u) {
    if (lid < s) {
      kv_sums[lid] += kv_sums[lid + s];
    }
    if (s < TPR && sub < s) {  // the query rows: within each row's TPR threads
      red[lid] += red[lid + s];
    }
    workgroupBarrier();
  }
  let fq = inverseSqrt(red[r * TPR] / f32(HD) + NORM_EPS) * SCALE;
  for (var i = sub; i < HD4; i += TPR) {
    qs[r * HD4 + i] *= fq;
  }
  if (own) {
    let fk = inverseSqrt(kv_sums[0].x / f32(HD) + NORM_EPS);
    let fv = select(1.0, inverseSqrt(kv_sums[0].y / f32(HD) + NORM_EPS), V_NORM);
    for (var i = lid; i < HD; i += WG) {
      ps[i] *= fk;
      vs[i] *= fv;
    }
  }
  workgroupBarrier();
  // RoPE: thread i turns pair (i, i + HALF) of every query row, and of the key, with one cos/sin.
  for (var i = lid; i < HALF; i += WG) {
    let cs = angle(pos, i);
    let j = i + HALF;
    for (var k = 0u; k < R; k++) {
      let x0 = qs[k * HD4 + i / 4u][i % 4u];
      let x1 = qs[k * HD4 + j / 4u][j % 4u];
      qs[k * HD4 + i / 4u][i % 4u] = x0 * cs.x - x1 * cs.y;
      qs[k * HD4 + j / 4u][j % 4u] = x0 * cs.y + x1 * cs.x;
    }
    if (own) {
      let x0 = ps[i];
      let x1 = ps[j];
      ps[i] = x0 * cs.x - x1 * cs.y;
      ps[j] = x0 * cs.y + x1 * cs.x;
    }
  }
  workgroupBarrier();
  if (own) {
    let row = (kvh * CAP + pos % CAP) * HD8;
    for (var c = lid; c < HD8; c += WG) {
      let o = 8u * c;
      kc[row + c] = pack8(vec4<f32>(ps[o], ps[o + 1u], ps[o + 2u], ps[o + 3u]),
                          vec4<f32>(ps[o + 4u], ps[o + 5u], ps[o + 6u], ps[o + 7u]));
      vc[row + c] = pack8(vec4<f32>(vs[o], vs[o + 1u], vs[o + 2u], vs[o + 3u]),
                          vec4<f32>(vs[o + 4u], vs[o + 5u], vs[o + 6u], vs[o + 7u]));
    }
    storageBarrier();  // the key loop below reads them back: a workgroup sees its own stores after this
  }
  workgroupBarrier();
}
