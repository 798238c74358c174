// 1-D convolution over time as a tiled implicit GEMM (ops.conv1d at stride 1, and ops.conv_transpose1d with
// groups 1 when TRANSPOSED). Time-major f32: x [IN_ROWS, IN_STRIDE] read at columns IN_OFFSET .. + C_IN, out
// [OUT_ROWS, OUT_STRIDE] written at columns OUT_OFFSET .. + C_OUT. The real input length is step.n_tokens.
//
// conv1d (TRANSPOSED false), w torch's Conv1d weight (C_OUT, C_IN, K):
//   out[t, o] = OUT_SCALE * ((out[t, o] if ACC) + bias[o] + sum_{k, i} w[o, i, k] * seen[t + k D - PAD, i])
// where seen is the transformed input (conv1d_input.wgsl) nearest-upsampled by UP (seen row s = row s / UP),
// zero outside [0, n UP). Output rows from out_len = n UP + 2 PAD - D (K - 1) to OUT_ROWS are written 0.
//
// TRANSPOSED, w torch's ConvTranspose1d weight (C_IN, C_OUT, K), stride S: split by output phase. Unpadded
// output row q with q + PAD = m S + r gets taps k = r + j S from input rows m - j, so each phase r (wid.z) is a
// stride-1 convolution of the input with J = ceil(K / S) taps (those with k >= K are zero):
//   y[m S + r - PAD, o] = bias[o] + sum_{j < J} sum_i w[i, o, r + j S] * u[m - j, i]
// Rows q from L = (n - 1) S - 2 PAD + K + OUT_PAD to the capacity are 0; REFLECT shifts every row down by one
// and copies row 1 into row 0 (ReflectionPad1d((1, 0))).
//
// A workgroup of 16 x 16 lanes computes a tile of TT = 16 RPT output rows x TO = 16 CPT output channels and
// walks the input channels CK at a time. Per chunk it loads into workgroup memory the input window the tile
// reads, WR = TT + D (K - 1) rows x CK channels (TT + J - 1 input rows when transposed), transformed once, and
// the weights of every tap for those channels; every tap reads the same window at its own row offset (stride
// 1), so one window load serves all K taps. Lane (tx, ty) owns rows ty RPT .. ty RPT + RPT - 1 and channels
// tx + 16 m (m < CPT): neighbouring lanes read neighbouring weight vectors (no bank conflicts) and store
// neighbouring output columns, and the 16 lanes of a row read the same window vector (a broadcast). Window and
// weights are stored as vec4s over 4 input channels, so a step of 4 input channels is, per output row, one
// window vec4 times a 4 x 4 weight matrix: RPT + CPT vec4 loads for 4 RPT CPT fmas (64 per 8 loads in 4 x 4
// blocks). Workgroup memory: (WR + J TO) CK 4 bytes, kept <= 16 KiB by ops/conv.py (_conv_tile).
//
// Constants: C_IN, C_OUT, K, D, PAD, UP, S, OUT_PAD, REFLECT, TRANSPOSED, J (taps per phase: K when not
// transposed), IN_ROWS, IN_STRIDE, IN_OFFSET, OUT_ROWS, OUT_STRIDE, OUT_OFFSET, HAS_BIAS, ACC, OUT_SCALE, RPT
// (1..8), CPT (4 or 8), CK (a multiple of 4), and conv1d_input's AFFINE, LEAKY, SLOPE, SNAKE.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> in_affine: array<f32>;
@group(0) @binding(4) var<storage, read> alpha: array<f32>;
@group(0) @binding(5) var<uniform> step: Step;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const TT: u32 = 16u * RPT;
const TO: u32 = 16u * CPT;
const CK4: u32 = CK / 4u;
const TAP: u32 = select(D, 1u, TRANSPOSED);  // window rows between taps
const WR: u32 = TT + TAP * (J - 1u);         // window rows

var<workgroup> xs: array<vec4<f32>, WR * CK4>;     // xs[row * CK4 + i / 4][i % 4] = input window row, channel c0 + i
// ws[(tap * CK4 + i / 4) * TO + o][i % 4] = weight of tap, input channel c0 + i, output channel o0 + o
var<workgroup> ws: array<vec4<f32>, J * CK4 * TO>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let o0 = wid.x * TO;
  let t0 = wid.y * TT;  // first tile row: output row (conv), or m (transposed)
  let phase = wid.z;
  let tx = lid % 16u;
  let ty = lid / 16u;
  let n_in = min(step.n_tokens, IN_ROWS);
  let n_seen = n_in * UP;
  var n_out = 0u;  // unpadded output rows
  var first_in = 0i;  // input (seen) row of window row 0
  if (TRANSPOSED) {
    if (n_in > 0u) {
      n_out = u32(max(i32((n_in - 1u) * S + K + OUT_PAD) - 2i * i32(PAD), 0i));
    }
    first_in = i32(t0) - i32(J - 1u);
  } else {
    let span = D * (K - 1u) + 1u;
    if (n_seen + 2u * PAD >= span) {
      n_out = n_seen + 2u * PAD - span + 1u;
    }
    first_in = i32(t0) - i32(PAD);
  }
  // The first tile row's output row; tiles wholly past the output only write their zeros.
  if (out_row(t0, phase) >= i32(n_out)) {
    store_tile(t0 + ty * RPT, phase, o0 + tx, n_out, vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0),
               vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0),
               vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    return;
  }
  // aR: row ty RPT + R, channels tx + 16 {0, 1, 2, 3}; bR: the same row, channels tx + 16 {4, 5, 6, 7} (CPT 8).
  // Named vectors, not arrays: a private array indexed in a loop is compiled to local memory. The unused ones
  // (R >= RPT, or CPT 4) are dead code.
  var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
  var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
  var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
  var b4 = vec4<f32>(0.0); var b5 = vec4<f32>(0.0); var b6 = vec4<f32>(0.0); var b7 = vec4<f32>(0.0);
  for (var c0 = 0u; c0 < C_IN; c0 += CK) {
    // The window: consecutive lanes take consecutive channels of a row (contiguous in x).
    for (var e = lid; e < WR * CK; e += 256u) {
      let i = e % CK;
      let row = e / CK;
      let s = first_in + i32(row);
      var v = 0.0;
      if (c0 + i < C_IN && s >= 0i && u32(s) < n_seen) {
        v = conv_input(x[(u32(s) / UP) * IN_STRIDE + IN_OFFSET + c0 + i], c0 + i);
      }
      xs[row * CK4 + i / 4u][i % 4u] = v;
    }
    // The weights of this chunk for every tap.
    if (TRANSPOSED) {
      // w[i, o, k]: consecutive lanes take consecutive taps of one (i, o), then consecutive o.
      for (var e = lid; e < J * CK * TO; e += 256u) {
        let j = e % J;
        let o = (e / J) % TO;
        let i = e / (J * TO);
        let k = phase + j * S;
        var v = 0.0;
        if (o0 + o < C_OUT && c0 + i < C_IN && k < K) {
          v = w[((c0 + i) * C_OUT + o0 + o) * K + k];
        }
        // Window row of output row m for tap j: (m - t0) + J - 1 - j; stored by that offset, J - 1 - j.
        ws[((J - 1u - j) * CK4 + i / 4u) * TO + o][i % 4u] = v;
      }
    } else {
      // w[o, i, k]. Consecutive lanes take the 4 channels of one vec4, then the next output channel: consecutive
      // words of ws, so the stores are free of bank conflicts (taps fastest, contiguous in w, put K lanes on one
      // bank); the 4 channels' values lie K words apart in w, so a lane quad still reads one or two sectors.
      for (var e = lid; e < TO * CK * K; e += 256u) {
        let c = e % 4u;
        let o = (e / 4u) % TO;
        let rest = e / (4u * TO);  // k * CK4 + i4
        let i = 4u * (rest % CK4) + c;
        let k = rest / CK4;
        var v = 0.0;
        if (o0 + o < C_OUT && c0 + i < C_IN) {
          v = w[((o0 + o) * C_IN + c0 + i) * K + k];
        }
        ws[rest * TO + o][c] = v;
      }
    }
    workgroupBarrier();
    for (var k = 0u; k < J; k++) {
      for (var i4 = 0u; i4 < CK4; i4++) {
        let wi = (k * CK4 + i4) * TO + tx;
        // Columns: output channels tx, tx + 16, tx + 32, tx + 48 (then + 64 .. 112 in wb); rows: 4 input channels.
        let wa = mat4x4<f32>(ws[wi], ws[wi + 16u], ws[wi + 32u], ws[wi + 48u]);
        var wb = wa;
        if (CPT == 8u) {
          wb = mat4x4<f32>(ws[wi + 64u], ws[wi + 80u], ws[wi + 96u], ws[wi + 112u]);
        }
        let xi = (ty * RPT + k * TAP) * CK4 + i4;
        let x0 = xs[xi];
        a0 += x0 * wa;
        if (CPT == 8u) { b0 += x0 * wb; }
        if (RPT > 1u) {
          let x1 = xs[xi + CK4];
          a1 += x1 * wa;
          if (CPT == 8u) { b1 += x1 * wb; }
        }
        if (RPT > 2u) {
          let x2 = xs[xi + 2u * CK4];
          a2 += x2 * wa;
          if (CPT == 8u) { b2 += x2 * wb; }
        }
        if (RPT > 3u) {
          let x3 = xs[xi + 3u * CK4];
          a3 += x3 * wa;
          if (CPT == 8u) { b3 += x3 * wb; }
        }
        if (RPT > 4u) {
          let x4 = xs[xi + 4u * CK4];
          a4 += x4 * wa;
          if (CPT == 8u) { b4 += x4 * wb; }
        }
        if (RPT > 5u) {
          let x5 = xs[xi + 5u * CK4];
          a5 += x5 * wa;
          if (CPT == 8u) { b5 += x5 * wb; }
        }
        if (RPT > 6u) {
          let x6 = xs[xi + 6u * CK4];
          a6 += x6 * wa;
          if (CPT == 8u) { b6 += x6 * wb; }
        }
        if (RPT > 7u) {
          let x7 = xs[xi + 7u * CK4];
          a7 += x7 * wa;
          if (CPT == 8u) { b7 += x7 * wb; }
        }
      }
    }
    workgroupBarrier();
  }
  store_tile(t0 + ty * RPT, phase, o0 + tx, n_out, a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7);
}

// Unpadded output row of tile row m: m itself, or m S + phase - PAD when transposed (negative for the first
// rows of some phases: those rows do not exist).
fn out_row(m: u32, phase: u32) -> i32 {
  if (TRANSPOSED) {
    return i32(m * S + phase) - i32(PAD);
  }
  return i32(m);
}

// The lane's RPT rows from tile row m (its first), channels o + 16 {0 .. CPT - 1}.
fn store_tile(m: u32, phase: u32, o: u32, n_out: u32, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>,
              a3: vec4<f32>, a4: vec4<f32>, a5: vec4<f32>, a6: vec4<f32>, a7: vec4<f32>, b0: vec4<f32>,
              b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>, b4: vec4<f32>, b5: vec4<f32>, b6: vec4<f32>,
              b7: vec4<f32>) {
  store_row(out_row(m, phase), o, n_out, a0, b0);
  if (RPT > 1u) { store_row(out_row(m + 1u, phase), o, n_out, a1, b1); }
  if (RPT > 2u) { store_row(out_row(m + 2u, phase), o, n_out, a2, b2); }
  if (RPT > 3u) { store_row(out_row(m + 3u, phase), o, n_out, a3, b3); }
  if (RPT > 4u) { store_row(out_row(m + 4u, phase), o, n_out, a4, b4); }
  if (RPT > 5u) { store_row(out_row(m + 5u, phase), o, n_out, a5, b5); }
  if (RPT > 6u) { store_row(out_row(m + 6u, phase), o, n_out, a6, b6); }
  if (RPT > 7u) { store_row(out_row(m + 7u, phase), o, n_out, a7, b7); }
}

// Unpadded output row q: its finished values when q < n_out, else zeros, at row q + REFLECT (and row 0 too for
// q = 1 under REFLECT: the reflection pad's copy).
fn store_row(q: i32, o: u32, n_out: u32, a: vec4<f32>, b: vec4<f32>) {
  if (q < 0i) {
    return;
  }
  let real = u32(q) < n_out;
  let row = u32(q) + select(0u, 1u, REFLECT);
  store4(row, o, real, a);
  if (CPT == 8u) { store4(row, o + 64u, real, b); }
  if (REFLECT && q == 1i) {
    store4(0u, o, real, a);
    if (CPT == 8u) { store4(0u, o + 64u, real, b); }
  }
}

fn store4(row: u32, o: u32, real: bool, v: vec4<f32>) {
  if (row >= OUT_ROWS) {
    return;
  }
  for (var m = 0u; m < 4u; m++) {
    let c = o + 16u * m;
    if (c < C_OUT) {
      let idx = row * OUT_STRIDE + OUT_OFFSET + c;
      var y = 0.0;
      if (real) {
        y = v[m];
        if (HAS_BIAS) { y += bias[c]; }
        if (ACC) { y += out[idx]; }
        y *= OUT_SCALE;
      }
      out[idx] = y;
    }
  }
}
