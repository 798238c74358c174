// sigmoid(z) = 1 / (1 + exp(-z)) without overflow: exp is only taken of -|z| (at most 1), so no infinity can
// appear for any finite z, however large (WGSL lets implementations assume floats are finite). For z < 0 the
// quotient e / (1 + e) keeps the relative accuracy of exp(z) down to where it underflows.
fn sigmoid(z: f32) -> f32 {
  let e = exp(-abs(z));
  let r = 1.0 / (1.0 + e);
  return select(e * r, r, z >= 0.0);
}
