// out[t, :] (+)= SCALE * table[ids[t], :] for N_TOK tokens, from a table kept as raw GGUF bytes (dequantised
// by quant/<type>.wgsl; see quant/f32.wgsl for the interface). One workgroup per token; its lanes write runs
// of 4 consecutive columns, so the stores of a subgroup are contiguous.
//
// A large table is split by rows into parts (separate buffers); each part gets its own dispatch over all
// tokens and only writes the tokens whose id falls in [ROW0, ROW0 + ROWS). An id outside the table writes
// nothing. ACC adds into out instead of overwriting it (the vision tower sums two rows of its learned 2-D
// position table onto the patch embeddings, one call per axis). Constants: ROWS, ROW0, COLS, ROW_BYTES (see
// matvec.wgsl), N_TOK, WG, GRID_X (as in matvec.wgsl), SCALE, ACC.
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * GRID_X;
  if (t >= N_TOK) {
    return;
  }
  let id = ids[t];
  if (id < ROW0 || id - ROW0 >= ROWS) {
    return;
  }
  let base = (id - ROW0) * ROW_BYTES;
  for (var c = 4u * lid; c < COLS; c += 4u * WG) {
    let v = SCALE * run_deq(base + (c / QK) * BLOCK_BYTES, (c % QK) / 4u);
    let o = t * COLS + c;
    // Float rows of any length: the last run may be partial.
    let n = min(4u, COLS - c);
    if (n == 4u && !ACC) {
      out[o] = v.x;
      out[o + 1u] = v.y;
      out[o + 2u] = v.z;
      out[o + 3u] = v.w;
    } else {
      for (var j = 0u; j < n; j++) {
        out[o + j] = select(v[j], out[o + j] + v[j], ACC);
      }
    }
  }
}
