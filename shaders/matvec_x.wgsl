// The activation of matvec.wgsl as a plain input: x, one token's row of COLS values, read from a buffer.
// (matvec_stream_norm.wgsl forms it in workgroup memory instead.)
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;

fn prologue(wi: u32, lid: u32) {}
