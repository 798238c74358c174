// attention.wgsl's queries from a q buffer, f32 [n_tokens, NH, HD] as ops.attention_inputs (or the vision
// tower's projection) wrote them; the caches are only read.
@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> kc: array<KvWord>;  // KvWord: the cache format's library
@group(0) @binding(2) var<storage, read> vc: array<KvWord>;

// qs = the tile's q rows times SCALE (0 for rows past the run). The workgroup's keys kb..ke are not needed here.
fn load_tile(x: u32, kvh: u32, kb: u32, ke: u32, lid: u32) {
  let rows = n_rows();
  for (var i = lid; i < R * HD4; i += WG) {
    let rr = x * R + i / HD4;
    var val = vec4<f32>(0.0);
    if (rr < rows) {
      val = q[q_row(rr, kvh) * HD4 + i % HD4] * SCALE;
    }
    qs[i] = val;
  }
}
