// Gemma's attention inputs from one [q | k | v] projection row per token, in one dispatch (it replaces six:
// q norm, q rope, k norm, k rope, v norm and kv_store):
//   q = rope(rms_norm(q_lin) * qn)                 -> Q f32 [MAXT, NH, HD]
//   k = rope(rms_norm(k_lin) * kn)                 -> the K cache, slot (step.pos + t) % CAP
//   v = rms_norm(v_lin) (V_NORM; v_lin otherwise)  -> the V cache, likewise
// RoPE as in rope.wgsl (NeoX pairs (i, i + NROT/2), dims from NROT on untouched, angle
// pos * FREQ_SCALE * BASE^(-2i/NROT) / ff[i] with FF, else without the factor); the cache's format (f16 or
// q8_0) from its kv_read_* and kv_write_* libraries.
// qkv: f32 rows of QKV_STRIDE values, token t's q heads at t * QKV_STRIDE, its k heads at + K_OFF and its v
// heads at + V_OFF. V_OFF may equal K_OFF: Gemma 4 26B's layers without a value projection use the key
// projection, before the key norm, as the value.
// One workgroup per (head, token): workgroup x < NH is query head x, then NKV key heads, then NKV value
// heads; y is the token. The head's values are normalised into workgroup memory, turned there pair by pair,
// and written out: f32 for q, a cache row in the cache's format for k and v.
// Entry points: `main` (q, k and v) and `queries` (q only: a layer that reads another layer's cache).
// Constants: NH, NKV, HD (even, and NROT <= HD), NROT, QKV_STRIDE, K_OFF, V_OFF, CAP, MAXT, EPS, V_NORM, FF,
// LOG2_BASE, FREQ_SCALE, WG (a power of two).
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> qn: array<f32>;
@group(0) @binding(2) var<storage, read> ff: array<f32>;  // FF only; any read-only buffer otherwise
@group(0) @binding(3) var<storage, read_write> Q: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;
@group(0) @binding(5) var<storage, read> kn: array<f32>;  // entry `main` only
@group(0) @binding(6) var<storage, read_write> kc: array<KvWord>;  // KvWord: the cache format's library
@group(0) @binding(7) var<storage, read_write> vc: array<KvWord>;

const HALF: u32 = NROT / 2u;
var<workgroup> head: array<f32, HD>;

// The values the cache format's store_key / store_value write (kv_write_f16.wgsl, kv_write_q8_0.wgsl).
fn staged(i: u32) -> f32 {
  return head[i];
}

// head = qkv[src .. src + HD) * rsqrt(mean(x^2) + EPS) [* weight: 0 qn, 1 kn, 2 none]. Ends with a barrier.
fn load_normed(src: u32, weight: u32, lid: u32) {
  var s = 0.0;
  for (var i = lid; i < HD; i += WG) {
    let v = qkv[src + i];
    head[i] = v;
    s += v * v;
  }
  let scale = inverseSqrt(workgroup_sum(s, lid) / f32(HD) + EPS);
  for (var i = lid; i < HD; i += WG) {
    var v = head[i] * scale;
    if (weight == 0u) {
      v *= qn[i];
    } else if (weight == 1u) {
      v *= kn[i];
    }
    head[i] = v;
  }
  workgroupBarrier();
}

// Turns head's pairs for position pos. Ends with a barrier.
fn rotate(pos: u32, lid: u32) {
  for (var i = lid; i < HALF; i += WG) {
    var factor = 1.0;
    if (FF) {
      factor = ff[i];
    }
    let cs = cos_sin(pos, inv_freq(i, NROT) * FREQ_SCALE / factor);
    let x0 = head[i];
    let x1 = head[i + HALF];
    head[i] = x0 * cs.x - x1 * cs.y;
    head[i + HALF] = x0 * cs.y + x1 * cs.x;
  }
  workgroupBarrier();
}

fn query(h: u32, t: u32, lid: u32) {
  load_normed(t * QKV_STRIDE + h * HD, 0u, lid);
  rotate(step.pos + t, lid);
  for (var i = lid; i < HD; i += WG) {
    Q[(t * NH + h) * HD + i] = head[i];
  }
}

@compute @workgroup_size(WG)
fn queries(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.y;
  if (t >= min(step.n_tokens, MAXT)) {
    return;  // the whole workgroup
  }
  query(wid.x, t, lid);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.y;
  if (t >= min(step.n_tokens, MAXT)) {
    return;
  }
  if (wid.x < NH) {
    query(wid.x, t, lid);
    return;
  }
  let is_key = wid.x < NH + NKV;
  let h = select(wid.x - NH - NKV, wid.x - NH, is_key);
  let pos = step.pos + t;
  let row = h * CAP + pos % CAP;
  if (is_key) {
    load_normed(t * QKV_STRIDE + K_OFF + h * HD, 1u, lid);
    rotate(pos, lid);
    store_key(row, lid);
  } else {
    let src = t * QKV_STRIDE + V_OFF + h * HD;
    if (V_NORM) {
      load_normed(src, 2u, lid);
    } else {
      for (var i = lid; i < HD; i += WG) {
        head[i] = qkv[src + i];
      }
      workgroupBarrier();
    }
    store_value(row, lid);
  }
}
