// Step 2 of a denoising step (src/rullama_py/ops/denoise.py), one workgroup over the whole canvas:
//   sort the positions by entropy ascending, ties by position (a bitonic sort of (entropy bits, position): the
//   entropies are >= 0, whose f32 bits order as their values); sorted position k is accepted iff the entropies
//   sorted before it sum to <= entropy_bound (so the lowest is always accepted);
//   canvas[c] = accepted ? draw[c] : n[c] (the renoise token);
//   stable = every argmax equals the previous step's (never on a new canvas's first step); previous = argmax;
//   mean entropy = sum H / n_pos.
// The sums of sorted entropies: each lane adds its E consecutive ones in order, then the lanes' sums are scanned
// in 16 groups of 16 (each sum in order); the mean uses the same total.
// report (u32): [0] accepted count, [1] mean entropy (f32 bits), [2] stable (0/1), [3] n_pos,
//   [4, 4 + CAP) canvas, [4 + CAP, 4 + 2 CAP) argmax, [4 + 2 CAP, 4 + 3 CAP) accepted (0/1); entries of positions
//   >= n_pos are left as they were.
// Needs libs=("denoise_lib",). Constants: CAP (<= 1024), WG (256), NP (a power of two >= CAP and >= WG).
@group(0) @binding(0) var<uniform> prm: DenoiseParams;
@group(0) @binding(1) var<storage, read> stats: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> noise: array<u32>;
@group(0) @binding(3) var<storage, read_write> prev: array<u32>;
@group(0) @binding(4) var<storage, read_write> canvas: array<u32>;
@group(0) @binding(5) var<storage, read_write> report: array<u32>;

const E: u32 = NP / WG;  // sorted entries per lane

var<workgroup> keys: array<vec2<u32>, NP>;
var<workgroup> lane_sum: array<f32, WG>;
var<workgroup> group_sum: array<f32, 16>;
var<workgroup> n_accepted: atomic<u32>;
var<workgroup> changed: atomic<u32>;

fn key_gt(a: vec2<u32>, b: vec2<u32>) -> bool {
  return a.x > b.x || (a.x == b.x && a.y > b.y);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  let n = min(prm.n_pos, CAP);
  if (lid == 0u) {
    atomicStore(&n_accepted, 0u);
    atomicStore(&changed, select(0u, 1u, (prm.flags & F_NEW_CANVAS) != 0u));
  }
  for (var i = lid; i < NP; i += WG) {
    keys[i] = select(vec2<u32>(0xFFFFFFFFu), vec2<u32>(stats[min(i, CAP - 1u)].x, i), i < n);
  }
  workgroupBarrier();
  for (var size = 2u; size <= NP; size = size << 1u) {
    for (var stride = size >> 1u; stride > 0u; stride = stride >> 1u) {
      for (var q = lid; q < NP / 2u; q += WG) {
        let i = 2u * stride * (q / stride) + q % stride;
        let j = i + stride;
        let a = keys[i];
        let b = keys[j];
        if (key_gt(a, b) == ((i & size) == 0u)) {
          keys[i] = b;
          keys[j] = a;
        }
      }
      workgroupBarrier();
    }
  }

  // Sums of the sorted entropies before each entry.
  var s = 0.0;
  for (var e = 0u; e < E; e++) {
    let k = lid * E + e;
    if (k < n) {
      s += bitcast<f32>(keys[k].x);
    }
  }
  lane_sum[lid] = s;
  workgroupBarrier();
  if (lid < 16u) {
    var gs = 0.0;
    for (var q = 0u; q < 16u; q++) {
      gs += lane_sum[lid * 16u + q];
    }
    group_sum[lid] = gs;
  }
  workgroupBarrier();
  let g = lid / 16u;
  var total = 0.0;
  var run = 0.0;
  for (var q = 0u; q < 16u; q++) {
    if (q == g) {
      run = total;
    }
    total += group_sum[q];
  }
  for (var j = g * 16u; j < lid; j++) {
    run += lane_sum[j];
  }

  var mine = 0u;
  for (var e = 0u; e < E; e++) {
    let k = lid * E + e;
    if (k < n) {
      let pos = keys[k].y;
      let ok = run <= prm.entropy_bound;
      run += bitcast<f32>(keys[k].x);
      let st = stats[pos];
      let tok = select(noise[CAP + pos], st.z, ok);
      canvas[pos] = tok;
      report[4u + pos] = tok;
      report[4u + CAP + pos] = st.y;
      report[4u + 2u * CAP + pos] = select(0u, 1u, ok);
      mine += select(0u, 1u, ok);
    }
  }
  atomicAdd(&n_accepted, mine);

  for (var c = lid; c < n; c += WG) {
    let a = stats[c].y;
    if (prev[c] != a) {
      atomicOr(&changed, 1u);
    }
    prev[c] = a;
  }
  workgroupBarrier();
  if (lid == 0u) {
    report[0] = atomicLoad(&n_accepted);
    report[1] = bitcast<u32>(total / f32(max(n, 1u)));
    report[2] = select(1u, 0u, atomicLoad(&changed) != 0u || n == 0u);
    report[3] = n;
  }
}
