// attention.wgsl for one token (decode), with attention_inputs.wgsl's work done inside it: a decode step is a
// chain of dependent dispatches, each costing a launch and a barrier whatever its size, and this saves one per
// layer. Every workgroup forms its own query tile from the token's [q | k | v] projection row:
//   q = rope(rms_norm(q_lin) * qn) * SCALE        (SCALE folded into the norm's factor: RoPE is linear)
// and the one workgroup whose keys include the token's own position (the last split) first stores the token's
//   k = rope(rms_norm(k_lin) * kn)   and   v = rms_norm(v_lin) (V_NORM) or v_lin
// into the caches at slot step.pos % CAP, in the cache's format, then reads them back like any other key: storageBarrier makes
// a workgroup's own stores visible to its invocations, and no other workgroup reads that slot (its key is the
// newest; in a ring it overwrites a key older than the window). Layers reading another layer's cache (no
// HAS_KV) only form queries. RoPE and the norms as in attention_inputs.wgsl (the key's and value's sums through
// the same workgroup_sum library); the cache's format (f16 or q8_0) from its kv_read_* and kv_write_* libraries.
// Needs MAXT == 1, one row tile (R >= G), and R * WG >= HD (the key and value pass through `ps`).
// Constants (besides attention.wgsl's): HAS_KV, K_OFF, V_OFF (offsets of the kv heads in the row, multiples of 4),
// V_NORM, NORM_EPS (the norms' epsilon), NROT (even, <= HD), FF, LOG2_BASE, FREQ_SCALE.
@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> kc: array<KvWord>;  // KvWord: the cache format's library
@group(0) @binding(2) var<storage, read_write> vc: array<KvWord>;
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

// ps[0..HD) = the HD values at vec4 index src of the row, times rsqrt(mean(x^2) + NORM_EPS) [times kn]. Ends with a
// barrier.
fn normed_into_ps(src: u32, weighted: bool, lid: u32) {
  var ss = 0.0;
  for (var i = lid; i < HD4; i += WG) {
    let v = qkv[src + i];
    ps[4u * i] = v.x;
    ps[4u * i + 1u] = v.y;
    ps[4u * i + 2u] = v.z;
    ps[4u * i + 3u] = v.w;
    ss += dot(v, v);
  }
  let f = inverseSqrt(workgroup_sum(ss, lid) / f32(HD) + NORM_EPS);
  for (var i = lid; i < HD4; i += WG) {
    var w = vec4<f32>(f);
    if (weighted) {
      w *= kn[i];
    }
    ps[4u * i] *= w.x;
    ps[4u * i + 1u] *= w.y;
    ps[4u * i + 2u] *= w.z;
    ps[4u * i + 3u] *= w.w;
  }
  workgroupBarrier();
}

// The values the cache format's store_key / store_value write (kv_write_f16.wgsl, kv_write_q8_0.wgsl).
fn staged(i: u32) -> f32 {
  return ps[i];
}

// The token's key and value of kv head kvh into the caches at slot pos % CAP.
fn store_new(kvh: u32, pos: u32, lid: u32) {
  let row = kvh * CAP + pos % CAP;
  normed_into_ps(K_OFF / 4u + kvh * HD4, true, lid);
  for (var i = lid; i < HALF; i += WG) {
    let cs = angle(pos, i);
    let x0 = ps[i];
    let x1 = ps[i + HALF];
    ps[i] = x0 * cs.x - x1 * cs.y;
    ps[i + HALF] = x0 * cs.y + x1 * cs.x;
  }
  workgroupBarrier();
  store_key(row, lid);
  workgroupBarrier();  // ps is the value's now
  let vsrc = V_OFF / 4u + kvh * HD4;
  if (V_NORM) {
    normed_into_ps(vsrc, false, lid);
  } else {
    for (var i = lid; i < HD4; i += WG) {
      let v = qkv[vsrc + i];
      ps[4u * i] = v.x;
      ps[4u * i + 1u] = v.y;
      ps[4u * i + 2u] = v.z;
      ps[4u * i + 3u] = v.w;
    }
    workgroupBarrier();
  }
  store_value(row, lid);
  storageBarrier();
  workgroupBarrier();
}

fn load_tile(x: u32, kvh: u32, kb: u32, ke: u32, lid: u32) {
  let pos = step.pos;
  if (HAS_KV && kb <= pos && pos < ke) {
    store_new(kvh, pos, lid);
  }
  // Row r of the tile is q head kvh * G + x * R + r of the one token; TPR threads norm it.
  let r = lid / TPR;
  let sub = lid % TPR;
  let rr = x * R + r;
  let live = rr < n_rows();
  let src = q_row(rr, kvh) * HD4;
  var ss = 0.0;
  for (var i = sub; i < HD4; i += TPR) {
    var v = vec4<f32>(0.0);
    if (live) {
      v = qkv[src + i];
    }
    qs[r * HD4 + i] = v;
    ss += dot(v, v);
  }
  red[lid] = ss;
  workgroupBarrier();
  for (var s = TPR / 2u; s > 0u; s /= 2u) {
    if (sub < s) {
      red[lid] += red[lid + s];
    }
    workgroupBarrier();
  }
  let f = inverseSqrt(red[r * TPR] / f32(HD) + NORM_EPS) * SCALE;
  for (var i = sub; i < HD4; i += TPR) {
    qs[r * HD4 + i] *= f * qn[i];
  }
  workgroupBarrier();
  // RoPE: thread i turns pair (i, i + HALF) of every row with one cos/sin.
  for (var i = lid; i < HALF; i += WG) {
    let cs = angle(pos, i);
    let j = i + HALF;
    for (var k = 0u; k < R; k++) {
      let x0 = qs[k * HD4 + i / 4u][i % 4u];
      let x1 = qs[k * HD4 + j / 4u][j % 4u];
      qs[k * HD4 + i / 4u][i % 4u] = x0 * cs.x - x1 * cs.y;
      qs[k * HD4 + j / 4u][j % 4u] = x0 * cs.y + x1 * cs.x;
    }
  }
  workgroupBarrier();
}
