"""ops.local_attention (Gemma 4's audio attention) against tests/reference_audio.local_attention (float64, in
transformers' block form: query blocks, unfolded key contexts, rel-shift, blocked mask; checked against
transformers' Gemma4AudioAttention to ~1e-14 in float64 outside this suite).

Each case records ONE graph for a capacity of rows and replays it for several token counts T = step.n_tokens.
Rows at or past T of q, k and v hold NaN, so a kernel that read one (even with weight 0) would return NaN, and
the output's rows at or past T hold a sentinel that must survive.

Tolerance (u = 2^-24; per (token, head) row, LANES = head_dim / 4):
- a score s = qs . (k_scale * k + rel) is formed from f32 inputs in f32: qs (1 rounding), k_scale itself and
  k_scale * k + rel (3), then a vec4 dot and a serial sum of LANES partials (LANES + 3), so its error is at most
  (LANES + 9) u A, A = sum_d |qs_d| (|k_scale k_d| + |rel_d|) (largest over the case's scores; from the data);
- the soft cap CAP * (1 - 2 / (exp(2s / CAP) + 1)) has slope <= 1 and adds at most (6 CAP + 2 |s|) u: WGSL's
  exp is within (3 + 2|y|) ulp (y = 2s / CAP, clamped to 30) and the tanh formula halves that, plus 4 roundings
  of values <= 2, times CAP;
- so every logit is off by at most d = (LANES + 9) u A + (6 CAP + 2 min(A, 15 CAP)) u (|s| <= A). Shifting logits by
  <= d moves each softmax weight by a factor within e^(+-2d): |sum dp v| <= 4d max|v| for small d;
- the weights' exp (arguments in [-2 CAP, 0]) is within (3 + 2|y|) ulp, and sum_i p_i |y_i| <= NK / e with
  sum p >= 1: under (3 + NK) u relative, twice through numerator and sum; the P.V sum of NK terms and the
  division add (NK + 2) u relative to sum p |v| / sum p <= max|v|.
atol = max|v| * (4 d + (3 NK + 12) u), for each (token, head) row with A, |s| and max|v| over the keys it sees.
A worst-case bound, 40 to 1000 times the largest row errors observed on lavapipe; any wrong key, rel_k row, scale or mask
is off by O(max|v|)."""

import numpy as np
import pytest

import reference_audio as ref
from rullama_py import gpu
from rullama_py.ops.local_attention import keys_per_query, local_attention, local_attention_plan, rel_rows

pytestmark = pytest.mark.pyodide

U = 2.0**-24
SENTINEL = 7.0


def set_step(device, step, n_tokens):
    device.write(step.buffer, np.array([0, n_tokens, n_tokens, 0, 0, 0, 0, 0], np.uint32))


def tolerance(q, k, rel_k, qsc, v, *, heads, hd, past, future, k_scale, softcap):
    """atol of the module docstring for every (token, head) row, [T, heads], from the case's data (float64):
    A, |s| and max|v| over the keys the row sees."""
    T = q.shape[0]
    qa = np.abs(q.reshape(T, heads, hd).astype(np.float64) * qsc)
    ka = np.abs(k.reshape(T, heads, hd).astype(np.float64) * k_scale)
    va = np.abs(v.reshape(T, heads, hd).astype(np.float64)).max(axis=2)  # [T, heads]
    ra = np.abs(rel_k.reshape(-1, heads, hd).astype(np.float64))
    lanes, nk = hd // 4, keys_per_query(past, future)
    a = np.zeros((T, heads))
    vmax = np.zeros((T, heads))
    t = np.arange(T)
    for n in range(nk):  # window slot n: key t + n + 1 - past, rel row c = n + 1
        key = t + n + 1 - past
        ok = (key >= 0) & (key < T)
        kk = np.clip(key, 0, T - 1)
        rel = ra[n + 1] if n + 1 < len(ra) else 0.0
        a_n = np.einsum("thd,thd->th", qa, ka[kk] + rel)
        a = np.where(ok[:, None], np.maximum(a, a_n), a)
        vmax = np.where(ok[:, None], np.maximum(vmax, va[kk]), vmax)
    d = (lanes + 9) * U * a + (6 * softcap + 2 * np.minimum(15 * softcap, a)) * U
    return vmax * (4 * d + (3 * nk + 12) * U)


def make_inputs(rng, capacity, *, heads, hd, chunk, past, future, sigma):
    """q, k, v f32 [capacity, heads * hd] (q, k of std sigma, v of std 1); rel_k = the sinusoidal table times a
    random relative_k_proj (as the engine computes it); q_scale from a random per_dim_scale."""
    width = heads * hd
    q, k = ((rng.standard_normal((capacity, width)) * sigma).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((capacity, width)).astype(np.float32)
    table = ref.rel_position_table(chunk=chunk, past=past, future=future, hidden=width)
    w = rng.standard_normal((width, width)) * (sigma / np.sqrt(width))
    rel_k = (table @ w).astype(np.float32)
    qsc = ref.audio_q_scale(rng.standard_normal(hd), hd).astype(np.float32)
    return q, k, v, rel_k, qsc


async def check(device, *, heads, hd, chunk, past, future, capacity, runs, softcap=50.0, sigma=1.0, seed=0):
    """Record once for `capacity` rows, replay for each T in `runs`; returns the largest error seen."""
    rng = np.random.default_rng(seed)
    k_scale = ref.AUDIO_K_SCALE
    q, k, v, rel_k, qsc = make_inputs(rng, capacity, heads=heads, hd=hd, chunk=chunk, past=past, future=future,
                                      sigma=sigma)
    width = heads * hd
    bufs = {name: device.tensor((capacity, width), label=name) for name in ("q", "k", "v", "out")}
    step = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    g = device.graph()
    await local_attention(g, bufs["q"], bufs["k"], bufs["v"], device.upload(rel_k), device.upload(qsc),
                              bufs["out"], step, n_heads=heads, head_dim=hd, chunk=chunk, past=past, future=future,
                              k_scale=k_scale, softcap=softcap)
    assert len(g) == 1
    worst = 0.0
    for T in runs:
        for name, src in (("q", q), ("k", k), ("v", v)):
            rows = np.full((capacity, width), np.nan, np.float32)  # rows past T must never be read
            rows[:T] = src[:T]
            device.write(bufs[name].buffer, rows)
        device.write(bufs["out"].buffer, np.full((capacity, width), SENTINEL, np.float32))
        set_step(device, step, T)
        await device.run(g)
        got = await device.read(bufs["out"])
        want = ref.local_attention(q[:T], k[:T], v[:T], rel_k, qsc, n_heads=heads, head_dim=hd, chunk=chunk,
                                   past=past, future=future, k_scale=k_scale, softcap=softcap)
        atol = tolerance(q[:T], k[:T], rel_k, qsc, v[:T], heads=heads, hd=hd, past=past, future=future,
                         k_scale=k_scale, softcap=softcap)
        err = np.abs(got[:T] - want).reshape(T, heads, hd).max(axis=2)  # [T, heads]
        bad = np.argwhere(~(err <= atol))
        assert not len(bad), f"T={T}: {len(bad)} (token, head) rows off, first {bad[0]}: {err[tuple(bad[0])]:.3g} > {atol[tuple(bad[0])]:.3g}"
        np.testing.assert_array_equal(got[T:], SENTINEL, err_msg=f"T={T}: rows past n_tokens were written")
        worst = max(worst, float(err.max()))
    return worst


@pytest.mark.parametrize(
    "heads,hd,chunk,past,future,capacity,runs,softcap,sigma",
    [
        # Gemma 4's window (chunk 12, past 12, future 0), T < chunk: 7, 3 and 1 tokens (the first query of the
        # tower sees only itself; queries near the start see fewer than 12 keys).
        (2, 16, 12, 12, 0, 7, (7, 3, 1), 50.0, 1.0),
        # T not a multiple of the chunk (29 = 2 * 12 + 5), then the full capacity of 40 (also not a multiple),
        # then 13: a graph recorded for 40 rows run for fewer; 4 heads of 32.
        (4, 32, 12, 12, 0, 40, (29, 40, 13), 50.0, 1.0),
        # the soft cap biting: logits of tens against a cap of 5.
        (3, 16, 12, 12, 0, 30, (30, 26), 5.0, 4.0),
        # a right context (future 3: keys t - 2 .. t + 2) and keys past T cut off at the end.
        (2, 16, 4, 3, 3, 21, (21, 6), 20.0, 1.0),
        # chunk 2, past 6: P = 5 rel rows, and the farthest visible key (c = 5) gets no rel term (rel-shift pad).
        (2, 16, 2, 6, 0, 17, (17,), 50.0, 1.0),
        # head_dim 48: 12 lanes, 5 rows per 60-thread workgroup (rows of different tokens share one).
        (2, 48, 12, 12, 0, 11, (11,), 50.0, 2.0),
    ],
)
async def test_local_attention(device, heads, hd, chunk, past, future, capacity, runs, softcap, sigma):
    await check(device, heads=heads, hd=hd, chunk=chunk, past=past, future=future, capacity=capacity, runs=runs,
                softcap=softcap, sigma=sigma, seed=heads * hd + capacity)


async def test_local_attention_fallback(device_fallback):
    await check(device_fallback, heads=2, hd=32, chunk=12, past=12, future=0, capacity=27, runs=(27, 12), sigma=2.0,
                seed=11)


async def test_local_attention_750(device):
    """The real size: 8 heads of 128 over 30 s of audio (750 tokens, 63 blocks of 12), logits large enough
    for the cap to matter a little; then 737 tokens through the same graph."""
    plan = local_attention_plan(n_heads=8, head_dim=128, max_tokens=750)
    assert plan["wg"] == 64 and plan["grid"] == (3000, 1)
    await check(device, heads=8, hd=128, chunk=12, past=12, future=0, capacity=750, runs=(750, 737), sigma=3.0,
                seed=750)


async def test_local_attention_rejects(device):
    t = device.tensor((5, 2 * 16))
    step = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    qsc = device.tensor((16,))
    assert rel_rows(12, 12, 0) == 13 and keys_per_query(12, 0) == 12 and keys_per_query(3, 3) == 5
    kw = dict(n_heads=2, head_dim=16, chunk=12, past=12, future=0, k_scale=ref.AUDIO_K_SCALE, softcap=50.0)
    with pytest.raises(ValueError, match="rel_k"):
        await local_attention(device.graph(), t, t, t, device.tensor((12, 32)), qsc, t, step, **kw)
    with pytest.raises(ValueError, match="past"):
        await local_attention(device.graph(), t, t, t, device.tensor((7, 32)), qsc, t, step,
                                  **dict(kw, past=0))
    with pytest.raises(ValueError, match="workgroup memory"):  # 2000 keys per query
        await local_attention(device.graph(), t, t, t, device.tensor((1007, 32)), qsc, t, step, **dict(kw, past=2000))
    with pytest.raises(ValueError, match="q_scale"):
        await local_attention(device.graph(), t, t, t, device.tensor((13, 32)), device.tensor((8,)), t, step,
                                  **kw)
