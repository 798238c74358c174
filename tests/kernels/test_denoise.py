"""DiffusionGemma's sampler kernels (rullama_py.ops.denoise) against tests/reference_denoise.py (float64):
denoise_noise (the counter-based generator, bit for bit against the host's mirror and the reference's),
denoise_probs (softmax in place, entropy, argmax, inverse-CDF draw), denoise_accept (entropy-bound acceptance,
the new canvas, the stability flag, the report) and mix_rows (self-conditioning: P @ E over a GGUF table).

None of these kernels has a subgroup or f16 variant: every device runs the same files (the step also runs once on
the fallback device to show it). Error bounds, u = 2^-24, from the arithmetic (reference_denoise says how):
- argmax: exact (proc = f32(raw) * f32(1/t) is one correctly rounded multiply on both sides; ties: first index).
- p and H: the relative errors of exp (WGSL allows 3 + 2|x| ULP), of proc's rounding and of the chunked sums
  (ceil(V / 256) + 32 additions deep): prob_tolerance, entropy_tolerance.
- the draw: f32 guarantees the float64 inverse CDF's token whenever u lies farther than draw_margin (the same
  terms on the cumulative sums) from every bucket boundary; at a boundary, a token whose bucket lies within the
  margin of u (in practice one of the two neighbours). Both cases are checked with u placed on purpose.
- acceptance: exact for the GPU's own entropies, except where the sum of lower entropies lies within its f32
  rounding ((n + 32) u of the sum) of the bound; exact always for dyadic entropies (the ties tests).
- mix_rows: reference_denoise.mix_rows_tolerance, matmul's rigorous worst case over V terms.
"""

from pathlib import Path

import numpy as np
import pytest

import reference_denoise as ref
import reference_quant as rq
from rullama_py import gpu
from rullama_py.ops import denoise as dn

pytestmark = pytest.mark.pyodide

U = 2.0**-24
ORACLE = Path(__file__).resolve().parent.parent / "fixtures" / "diffusion_gemma_tiny_oracle.npz"


def chunk(vocab: int) -> int:
    return -(-vocab // dn.WG)


class Rig:
    """A Denoiser recorded once into a graph over a logits buffer and a canvas; step() runs it."""

    @classmethod
    async def make(cls, device, capacity, vocab):
        r = cls()
        r.device, r.capacity, r.vocab = device, capacity, vocab
        r.dn = dn.Denoiser(device, capacity, vocab)
        r.logits = device.tensor((capacity, vocab), "float32", "logits")
        r.canvas = device.tensor((capacity,), "uint32", "canvas")
        r.graph = device.graph()
        await r.dn.record(r.graph, r.logits, r.canvas)
        return r

    async def step(self, raw, noise=None, **params):
        """Write raw logits (and host noise u, n), run one step; (report, stats [n, 4], p [n, V])."""
        raw = np.ascontiguousarray(raw, np.float32)
        self.device.write(self.logits.buffer, raw)
        if noise is not None:
            self.dn.write_noise(*noise)
        self.dn.set_step(n_pos=raw.shape[0], host_noise=noise is not None, **params)
        rep = self.dn.parse(await self.device.run(self.graph, self.dn.readback, self.dn.report_source))
        stats = (await self.device.read(self.dn.stats)).reshape(-1, 4)[: raw.shape[0]]
        p = (await self.device.read(self.logits)).reshape(self.capacity, self.vocab)[: raw.shape[0]]
        return rep, stats, p


def logit_rows(vocab, rng):
    """Eight rows of the kinds a decoder gives and the edge cases: small, medium and large random logits,
    softcapped saturated ones, a near one-hot row (its tail underflows to p = 0 at t = 0.4), a uniform row (argmax
    0, H = log V), a row whose max appears twice (the first index wins), a wide spread."""
    r = rng.standard_normal((8, vocab))
    rows = [0.1 * r[0], 3.0 * r[1], 30 * np.tanh(8 * r[2] / 30), np.full(vocab, -30.0), np.full(vocab, 1.5),
            2.0 * r[5], 10.0 * r[6], r[7]]
    rows[3][rng.integers(vocab)] = 30.0
    hi = rng.choice(vocab, 2, replace=False)
    rows[5][hi] = rows[5].max() + 1.0
    return np.array(rows, np.float32)


def check_probs(raw, t, stats, p, u):
    """p, entropy, argmax and the draw of one step against the reference; returns the GPU entropies."""
    V = raw.shape[1]
    want_p = ref.softmax(raw, t)
    assert np.all(np.abs(p - want_p) <= ref.prob_tolerance(raw, t, chunk(V))), \
        f"p: worst error / bound {(np.abs(p - want_p) / ref.prob_tolerance(raw, t, chunk(V))).max():.3g}"
    h = stats[:, 0].view(np.float32)
    tol = ref.entropy_tolerance(raw, t, chunk(V))
    assert np.all(np.abs(h - ref.entropy(raw, t)) <= tol), f"entropy errors {np.abs(h - ref.entropy(raw, t))}"
    np.testing.assert_array_equal(stats[:, 1], ref.proc_f32(raw, t).argmax(-1))
    margin = ref.draw_margin(raw, t, chunk(V))
    exact = 0
    for c in range(raw.shape[0]):
        cands = ref.draw_candidates(want_p[c], float(u[c]), margin[c])
        assert int(stats[c, 2]) in cands, f"row {c}: drew {stats[c, 2]}, candidates {sorted(cands)[:10]}"
        if len(cands) == 1:
            exact += 1
    return h, exact


def check_accept(h, rep, bound, draws, renoise):
    """The report's acceptance against the reference over the GPU's own entropies (ambiguous only where the sum
    of lower entropies is within its rounding of the bound)."""
    n = h.size
    want, lower = ref.accept(h, np.float32(bound))
    sure = np.abs(lower - np.float32(bound)) > (n + 32) * U * lower + 1e-30
    assert np.array_equal(rep.accepted[sure], want[sure])
    assert rep.n_accepted == int(rep.accepted.sum()) >= 1
    np.testing.assert_array_equal(rep.canvas, np.where(rep.accepted, draws, renoise))
    assert abs(rep.mean_entropy - h.astype(np.float64).mean()) <= (n + 34) * U * h.astype(np.float64).mean() + 1e-30


# -- noise ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed, counter, n_pos", [(0, 0, 8), (7, 5, 5), (2**32 - 1, 2**32 - 1, 8), (123456, 48, 3)])
async def test_noise_generator(device, seed, counter, n_pos):
    """The GPU's u and n equal the host mirror and the reference bit for bit (a new canvas with F_INIT_CANVAS);
    positions past n_pos are untouched; F_HOST_NOISE leaves host-written noise as it is."""
    V = 1000
    d = dn.Denoiser(device, 8, V)
    canvas = device.upload(np.full(8, 77, np.uint32), "canvas")
    g = device.graph()
    await d.record_init(g, canvas)
    d.write_noise(np.full(8, 0.25, np.float32), np.full(8, 9, np.uint32))
    d.set_step(temperature=1.0, entropy_bound=0.1, seed=seed, counter=counter, init_canvas=True, n_pos=n_pos)
    await device.run(g)
    words = await device.read(d.noise)
    u, n = dn.denoise_noise_host(seed, counter, n_pos, V)
    ru, rn = ref.noise(seed, counter, n_pos, V)
    np.testing.assert_array_equal(u, ru)
    np.testing.assert_array_equal(n, rn)
    np.testing.assert_array_equal(words[:n_pos].view(np.float32), u)
    np.testing.assert_array_equal(words[8 : 8 + n_pos], n)
    assert np.all(words[n_pos:8].view(np.float32) == 0.25) and np.all(words[8 + n_pos :] == 9)
    got_canvas = await device.read(canvas)
    np.testing.assert_array_equal(got_canvas[:n_pos], n)
    assert np.all(got_canvas[n_pos:] == 77)
    # host noise: the kernel leaves it (and the canvas flag still copies its tokens)
    d.write_noise(np.linspace(0, 0.9, 8, dtype=np.float32), np.arange(8, dtype=np.uint32) + 100)
    d.set_step(temperature=1.0, entropy_bound=0.1, seed=seed, counter=counter, host_noise=True, init_canvas=True)
    await device.run(g)
    words = await device.read(d.noise)
    np.testing.assert_array_equal(words[:8].view(np.float32), np.linspace(0, 0.9, 8, dtype=np.float32))
    np.testing.assert_array_equal(await device.read(canvas), np.arange(8) + 100)


def test_noise_is_uniform():
    u, n = dn.denoise_noise_host(3, 0, 20000, 262144)
    assert abs(u.mean() - 0.5) < 0.01 and u.min() >= 0 and u.max() < 1
    assert abs(n.mean() / 262144 - 0.5) < 0.01 and n.max() < 262144
    u1, n1 = dn.denoise_noise_host(3, 1, 20000, 262144)
    assert np.mean(u == u1) < 0.01 and np.mean(n == n1) < 0.01
    assert not np.array_equal(dn.denoise_noise_host(4, 0, 16, 512)[1], dn.denoise_noise_host(3, 0, 16, 512)[1])


# -- one step ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", [77, 1000, 4099])
@pytest.mark.parametrize("temperature", [0.8, 0.4 + 0.4 / 48])
async def test_step(device, vocab, temperature):
    """Eight rows of every kind (logit_rows) with the generator's noise: p in place, H, argmax, draws, the
    report. 77 leaves most lanes without a chunk; 4099 is no multiple of the workgroup."""
    rng = np.random.default_rng(vocab)
    raw = logit_rows(vocab, rng)
    rig = await Rig.make(device, 8, vocab)
    rep, stats, p = await rig.step(raw, temperature=temperature, entropy_bound=2.0, seed=vocab, counter=3,
                                   new_canvas=True)
    u, n = dn.denoise_noise_host(vocab, 3, 8, vocab)
    h, exact = check_probs(raw, temperature, stats, p, u)
    assert exact >= 4  # most draws lie away from every boundary, so they are checked for equality
    assert stats[4, 1] == 0 and abs(h[4] - np.log(vocab)) < 1e-5  # the uniform row
    check_accept(h, rep, 2.0, stats[:, 2], n)
    np.testing.assert_array_equal(rep.argmax, stats[:, 1])
    assert not rep.stable
    np.testing.assert_array_equal(await device.read(rig.canvas), rep.canvas)


async def test_step_on_the_fallback_device(device_fallback):
    rng = np.random.default_rng(5)
    raw = logit_rows(1000, rng)
    rig = await Rig.make(device_fallback, 8, 1000)
    rep, stats, p = await rig.step(raw, temperature=0.7, entropy_bound=0.5, seed=1, counter=2, new_canvas=True)
    u, n = dn.denoise_noise_host(1, 2, 8, 1000)
    h, _ = check_probs(raw, 0.7, stats, p, u)
    check_accept(h, rep, 0.5, stats[:, 2], n)


async def test_large_vocabulary(device):
    """V = 262144 (Gemma's): chunks of 1024 per lane."""
    V = 262144
    rng = np.random.default_rng(11)
    r = rng.standard_normal((4, V))
    raw = np.array([30 * np.tanh(6 * r[0] / 30), np.full(V, -30.0), 2.0 * r[2], np.zeros(V)], np.float32)
    raw[1, 200000] = 30.0
    raw[1, 5] = 29.0  # a second likely token, early in the row
    rig = await Rig.make(device, 4, V)
    rep, stats, p = await rig.step(raw, temperature=0.8, entropy_bound=0.1, seed=9, counter=48, new_canvas=True)
    u, n = dn.denoise_noise_host(9, 48, 4, V)
    h, _ = check_probs(raw, 0.8, stats, p, u)
    assert stats[1, 1] == 200000 and stats[3, 1] == 0
    check_accept(h, rep, 0.1, stats[:, 2], n)


async def test_draw_at_and_away_from_bucket_boundaries(device):
    """Host-written u: in the middle of buckets (the draw must equal float64's), exactly on boundaries (f32 of
    float64's cumulative sums: one of the two neighbours), 0 (the first token with p > 0) and the largest u below
    1 (the last token with p > 0). Five likely tokens; every other logit is -200, whose p underflows to exactly 0
    in f32 (float64 keeps ~1e-88: the reference's candidates include them, the kernel never draws them)."""
    V = 300
    rng = np.random.default_rng(2)
    hot = np.sort(np.concatenate([[4, V - 4], rng.choice(np.arange(10, V - 10), 3, replace=False)]))
    base = np.full(V, -200.0)
    base[hot] = [0.5, 2.0, 1.0, 1.5, 0.0]
    raw = np.tile(base, (8, 1)).astype(np.float32)
    t = 1.0
    p64 = ref.softmax(raw[0], t)
    cdf = np.cumsum(p64)
    mids = [cdf[k] - p64[k] / 2 for k in hot[:3]]
    edges = [cdf[hot[0]], cdf[hot[2]]]
    u = np.array(mids + edges + [0.0, 1 - 2.0**-24, 0.5], np.float32)
    rig = await Rig.make(device, 8, V)
    _, stats, p = await rig.step(raw, noise=(u, np.arange(8)), temperature=t, entropy_bound=0.0, new_canvas=True)
    check_probs(raw, t, stats, p, u)
    d = stats[:, 2].astype(int)
    np.testing.assert_array_equal(d[:3], hot[:3])                     # mid-bucket: exact
    assert d[3] in (hot[0], hot[1]) and d[4] in (hot[2], hot[3])      # on a boundary: a neighbour
    assert d[5] == hot[0] == 4 and d[6] == hot[-1] == V - 4           # the first and last tokens with p > 0
    assert np.all(p[:, base < -100] == 0)
    margin = ref.draw_margin(raw[:1], t, chunk(V))[0]
    for k in range(3):
        assert ref.draw_candidates(p64, float(u[k]), margin) == {hot[k]}


async def test_draws_around_boundaries_skip_empty_tokens(device):
    """u a few f32 steps either side of each boundary between likely tokens separated by tokens of p = 0: the
    kernel's sums may put u Z just past a boundary by rounding, and must then draw the next likely token, never
    one of the empty ones between (a chunk of only empty tokens has nothing to cross). The trap: u Z can fall
    between the exact sum through a likely token and its f32 rounding (the prefix of the next, empty chunk), so
    that the likely token's chunk fails its comparison by rounding while the empty chunk's u Z - prefix is
    negative. These logits and offsets fall into that window for several rows (found by simulating the kernel's
    f32 sums; a kernel without the e > 0 guards drew token 42 for row 13 on lavapipe)."""
    V = 300
    hot = np.array([4, 40, 63, 70, 95, 100, V - 4])
    base = np.full(V, -200.0)
    base[hot] = [-0.45, 1.5, 1.59, 1.84, 0.95, 0.11, 0.76]
    raw = np.tile(base, (48, 1)).astype(np.float32)
    cdf = np.cumsum(ref.softmax(raw[0], 1.0))
    u = np.array([np.float32(cdf[hot[k]]) + np.float32(j) * np.spacing(np.float32(cdf[hot[k]]))
                  for k in range(6) for j in range(-4, 4)], np.float32)
    rig = await Rig.make(device, 48, V)
    _, stats, p = await rig.step(raw, noise=(u, np.zeros(48)), temperature=1.0, entropy_bound=0.0, new_canvas=True)
    check_probs(raw, 1.0, stats, p, u)
    for r, k in enumerate(np.repeat(range(6), 8)):
        assert stats[r, 2] in (hot[k], hot[k + 1]), (r, stats[r, 2], hot[k], hot[k + 1])


# -- acceptance ----------------------------------------------------------------------------------------------------

async def _accept_only(device, capacity, h, argmax, draws, renoise, bound, *, prev=None, new_canvas=False):
    """denoise_accept alone over host-written stats (entropies chosen exactly)."""
    n = h.size
    stats = np.zeros((capacity, 4), np.uint32)
    stats[:n, 0] = np.asarray(h, np.float32).view(np.uint32)
    stats[:n, 1], stats[:n, 2] = argmax, draws
    params = device.tensor((8,), "uint32", "params", usage=gpu.UNIFORM)
    device.write(params.buffer, dn.denoise_params_bytes(temperature=1.0, entropy_bound=bound, n_pos=n, vocab=1 << 20,
                                                        new_canvas=new_canvas))
    st = device.upload(stats, "stats")
    noise = device.upload(np.frombuffer(dn.noise_bytes(np.zeros(n), renoise, capacity), np.uint32), "noise")
    prev_t = device.upload(np.full(capacity, 0xFFFFFFFF, np.uint32) if prev is None else
                           np.asarray(prev, np.uint32), "prev")
    canvas = device.upload(np.full(capacity, 5, np.uint32), "canvas")
    report = device.upload(np.full(dn.report_nbytes(capacity) // 4, 0xABCD, np.uint32), "report")
    g = device.graph()
    await dn.denoise_accept(g, params, st, noise, prev_t, canvas, report, capacity=capacity)
    await device.run(g)
    words = await device.read(report)
    return dn.parse_report(words.tobytes(), capacity), words, await device.read(canvas), await device.read(prev_t)


@pytest.mark.parametrize("capacity, n", [(16, 16), (300, 300), (1024, 1000)])
async def test_accept_ties_at_the_bound(device, capacity, n):
    """Dyadic entropies (exact sums): the sum of lower entropies exactly at the bound accepts, just above
    rejects; equal entropies sort by position; report words of positions >= n_pos stay untouched."""
    rng = np.random.default_rng(capacity)
    h = np.full(n, 4.0, np.float32)
    h[[n - 1, 2]] = 0.03125        # the two lowest, tied: position 2 first
    h[9] = 0.0625
    h[[7, 0]] = 0.5                # position 0 sees 0.125 below it (== bound: accepted), position 7 0.625
    h[[11, 13]] = 4.0
    argmax = rng.integers(0, 1000, n)
    draws = rng.integers(0, 1000, n)
    renoise = rng.integers(1000, 2000, n)
    rep, words, canvas, prev = await _accept_only(device, capacity, h, argmax, draws, renoise, 0.125)
    acc = np.zeros(n, bool)
    acc[[2, n - 1, 9, 0]] = True
    np.testing.assert_array_equal(rep.accepted, acc)
    assert rep.n_accepted == 4 and not rep.stable
    np.testing.assert_array_equal(rep.canvas, np.where(acc, draws, renoise))
    np.testing.assert_array_equal(canvas[:n], rep.canvas)
    np.testing.assert_array_equal(rep.argmax, argmax)
    np.testing.assert_array_equal(prev[:n], argmax)
    assert rep.mean_entropy == pytest.approx(h.astype(np.float64).mean(), rel=(n + 34) * U)
    if capacity > n:
        h0 = dn.REPORT_HEADER
        for a in range(3):
            assert np.all(words[h0 + a * capacity + n : h0 + (a + 1) * capacity] == 0xABCD)
        assert np.all(canvas[n:] == 5)


async def test_accept_cut_inside_a_tie_and_zero_bound(device):
    h = np.full(10, 1.0, np.float32)
    h[[8, 3, 6, 1]] = 0.0625
    d, r = np.arange(10) + 100, np.arange(10) + 200
    rep, *_ = await _accept_only(device, 16, h, np.zeros(10), d, r, 0.125)
    np.testing.assert_array_equal(np.nonzero(rep.accepted)[0], [1, 3, 6])  # 0, 0.0625, 0.125 below them; 8 sees 0.1875
    rep, *_ = await _accept_only(device, 16, h, np.zeros(10), d, r, 0.0)
    np.testing.assert_array_equal(np.nonzero(rep.accepted)[0], [1])        # only the lowest
    h[[4, 5]] = 0.0
    rep, *_ = await _accept_only(device, 16, h, np.zeros(10), d, r, 0.0)
    np.testing.assert_array_equal(np.nonzero(rep.accepted)[0], [1, 4, 5])  # zero entropies sum to 0 <= 0


async def test_stable_flag(device):
    """Stable iff every argmax equals the previous step's; never on a canvas's first step."""
    a = np.arange(8) * 3
    h = np.full(8, 1.0, np.float32)
    rep, *_ = await _accept_only(device, 8, h, a, a, a, 0.1, prev=a, new_canvas=True)
    assert not rep.stable
    rep, *_ = await _accept_only(device, 8, h, a, a, a, 0.1, prev=a)
    assert rep.stable
    b = a.copy()
    b[7] += 1
    rep, *_ = await _accept_only(device, 8, h, b, a, a, 0.1, prev=a)
    assert not rep.stable


async def test_stable_over_steps(device):
    """The full step over five runs: the previous argmax is kept by the op between runs."""
    rng = np.random.default_rng(4)
    A = (3 * rng.standard_normal((8, 500))).astype(np.float32)
    B = A.copy()
    B[3, A[3].argmax()] -= 20.0  # row 3's argmax moves
    rig = await Rig.make(device, 8, 500)
    flags = []
    for raw, new in ((A, True), (A, False), (B, False), (B, False), (B, True)):
        rep, stats, _ = await rig.step(raw, temperature=0.6, entropy_bound=0.1, seed=1, counter=len(flags),
                                       new_canvas=new)
        np.testing.assert_array_equal(rep.argmax, ref.proc_f32(raw, 0.6).argmax(-1))
        flags.append(rep.stable)
    assert flags == [False, True, False, True, False]


async def test_host_noise_replay(device):
    """Recorded draws written by the host: the draws follow its u, the rejected positions take its tokens, and
    the kernel leaves the noise buffer as written."""
    rng = np.random.default_rng(8)
    raw = (2 * rng.standard_normal((8, 640))).astype(np.float32)
    raw[:3, 100] = 12.0  # three confident rows
    u = rng.random(8).astype(np.float32)
    n = rng.integers(0, 640, 8).astype(np.uint32)
    rig = await Rig.make(device, 8, 640)
    rep, stats, p = await rig.step(raw, noise=(u, n), temperature=0.7, entropy_bound=0.1, seed=5, new_canvas=True)
    h, _ = check_probs(raw, 0.7, stats, p, u)
    check_accept(h, rep, 0.1, stats[:, 2], n)
    assert 1 <= rep.n_accepted < 8
    words = await device.read(rig.dn.noise)
    np.testing.assert_array_equal(words[:8].view(np.float32), u)
    np.testing.assert_array_equal(words[8:], n)


def test_bad_input():
    ok = dict(temperature=0.8, entropy_bound=0.1, n_pos=16, vocab=512)
    assert len(dn.denoise_params_bytes(**ok)) == dn.PARAMS_BYTES
    for bad, words in ((dict(temperature=0.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
                       (dict(entropy_bound=float("inf")), "entropy bound"), (dict(n_pos=0), "positions"),
                       (dict(n_pos=2000), "positions"), (dict(seed=-1), "seed"), (dict(counter=2**32), "counter")):
        with pytest.raises(ValueError, match=words):
            dn.denoise_params_bytes(**{**ok, **bad})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dn.noise_bytes([0.5, 1.0], [1, 2], 4)
    with pytest.raises(ValueError, match="does not fit"):
        dn.noise_bytes(np.zeros(5), np.zeros(5), 4)


async def test_denoiser_refuses_bad_sizes(device):
    with pytest.raises(ValueError, match="1..1024"):
        dn.Denoiser(device, 2000, 512)
    d = dn.Denoiser(device, 4, 512)
    with pytest.raises(ValueError, match="n_pos"):
        d.set_step(temperature=1.0, entropy_bound=0.1, n_pos=5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        d.write_noise(np.zeros(4), [0, 1, 2, 512])
    with pytest.raises(ValueError, match="need"):
        await d.record(device.graph(), device.tensor((4, 100)), device.tensor((4,), "uint32"))


# -- mix_rows ------------------------------------------------------------------------------------------------------

def _table(device, qt, rows, cols, rng, max_binding=None):
    raw = rq.random_weight(qt, rows, cols, rng)
    saved = device.limits["max-storage-buffer-binding-size"]
    if max_binding is not None:
        device.limits["max-storage-buffer-binding-size"] = max_binding
    try:
        t = device.upload_rows(raw.tobytes(), rows, rq.row_bytes(qt, cols), (rows, cols), qt, f"E_{qt}")
    finally:
        device.limits["max-storage-buffer-binding-size"] = saved
    return t, rq.dequantize(raw, qt, cols)


async def _mix(device, qt, n_rows, vocab, cols, seed, *, scale=8.0, max_binding=None, rows_per_split=None,
               parts=None, dispatches=None):
    rng = np.random.default_rng(seed)
    table, E = _table(device, qt, vocab, cols, rng, max_binding)
    if parts is not None:
        assert len(table.parts) == parts
    P = ref.softmax(3 * rng.standard_normal((n_rows, vocab)), 0.8).astype(np.float32)
    P[1] = 0.0  # the first step's probabilities: no self-conditioning
    out = device.upload(np.full((n_rows, cols), np.nan, np.float32), "soft")
    g = device.graph()
    await dn.mix_rows(g, device.upload(P, "probs"), table, out, n_rows=n_rows, scale=scale,
                      rows_per_split=rows_per_split)
    if dispatches is not None:
        assert len(g) == dispatches
    await device.run(g)
    got = (await device.read(out)).reshape(n_rows, cols)
    want = ref.mix_rows(P, E, scale)
    tol = ref.mix_rows_tolerance(P, E, scale)
    assert np.all(np.abs(got - want) <= tol), f"{qt}: worst error / bound {(np.abs(got - want) / tol).max():.3g}"
    assert np.all(got[1] == 0.0)
    return got


@pytest.mark.parametrize("qt, cols", [("f32", 64), ("f16", 64), ("q8_0", 64), ("q4_k", 256)])
async def test_mix_rows(device, qt, cols):
    """Six positions over 700 rows, split along the rows into partials that the reduce dispatch sums."""
    await _mix(device, qt, 6, 700, cols, seed=1, dispatches=2)


@pytest.mark.native_only  # the whole Pyodide run's heaviest cases: lighter ones test the same code there
async def test_mix_rows_parts_and_splits(device):
    """A Q8_0 table in three parts (each its own dispatch and slices), 64 rows a split; the same product as one
    split written straight to the output (one dispatch); ragged F16 rows of 101."""
    await _mix(device, "q8_0", 5, 450, 64, seed=2, max_binding=68 * 150, rows_per_split=64, parts=3, dispatches=4)
    await _mix(device, "q8_0", 5, 450, 64, seed=2, rows_per_split=450, parts=1, dispatches=1)
    await _mix(device, "f16", 3, 257, 101, seed=3, scale=0.5)


async def test_mix_rows_large_tiles(device):
    """130 positions x 256 dims: 8 x 8 blocks (128 x 128 tiles), partial tiles on both axes, two Q4_K parts."""
    await _mix(device, "q4_k", 130, 300, 256, seed=4, max_binding=144 * 200, parts=2)


async def test_mix_rows_refuses_bad_shapes(device):
    table, _ = _table(device, "f32", 100, 8, np.random.default_rng(0))
    g = device.graph()
    with pytest.raises(ValueError, match="probabilities"):
        await dn.mix_rows(g, device.tensor((2, 99)), table, device.tensor((2, 8)), n_rows=2)
    with pytest.raises(ValueError, match="out"):
        await dn.mix_rows(g, device.tensor((2, 100)), table, device.tensor((2, 7)), n_rows=2)


# -- the transformers oracle ---------------------------------------------------------------------------------------

async def replay_oracle(device, z) -> dict:
    """Feed the recorded steps of transformers' generate whose logits the fixture keeps (each block's first two and
    last two; tests/fixtures/README.md) through the kernels, with its uniforms and renoise canvases, and compare
    entropy, argmax, draws, acceptance, the next canvas and the stable flag. A draw or an acceptance may differ only
    where u, or the sum of lower entropies, lies within the f32 margin of a boundary (the recorded run summed in
    float64); returns how many were compared and how many matched."""
    raw_all = z["step_raw_logits"].astype(np.float32)
    at = z["step_raw_logits_at"].tolist()
    _, C, V = raw_all.shape
    blocks = z["step_block"]
    S = len(blocks)
    rig = await Rig.make(device, C, V)
    counts = dict(steps=len(at), blocks=len(np.unique(blocks)), draws=0, draws_equal=0, draws_clear=0, masks_equal=0,
                  canvases_checked=0, last_steps=0)
    prev = None  # the recorded step run just before, if it is this one's predecessor in the same block
    for k, i in enumerate(at):
        first = i == 0 or blocks[i] != blocks[i - 1]
        follows = prev is not None and prev == i - 1 and not first
        t = float(z["step_temperature"][i])
        u = np.minimum(z["step_uniform"][i].astype(np.float32), np.float32(1 - U))
        # the uniform canvases in call order: step i of block b drew row b + i + 1 (row b + i was its input's)
        n = z["step_randint"][int(blocks[i]) + i + 1].astype(np.uint32)
        rep, stats, p = await rig.step(raw_all[k], noise=(u, n), temperature=t, entropy_bound=0.1,
                                       new_canvas=not follows)
        h = stats[:, 0].view(np.float32)
        tol = ref.entropy_tolerance(raw_all[k], t, chunk(V)) + 4 * U * np.abs(z["step_entropy"][i])
        assert np.all(np.abs(h - z["step_entropy"][i]) <= tol), f"step {i}: entropy"
        np.testing.assert_array_equal(rep.argmax, z["step_argmax"][i])
        want_p = ref.softmax(raw_all[k], t)
        margin = ref.draw_margin(raw_all[k], t, chunk(V)) + U  # + the rounding of u to f32
        for c in range(C):
            cands = ref.draw_candidates(want_p[c], float(z["step_uniform"][i][c]), margin[c])
            assert int(stats[c, 2]) in cands and int(z["step_denoiser"][i][c]) in cands, f"step {i} position {c}"
            counts["draws"] += 1
            counts["draws_clear"] += len(cands) == 1
            counts["draws_equal"] += int(stats[c, 2]) == int(z["step_denoiser"][i][c])
        _, lower = ref.accept(h, np.float32(0.1))
        sure = np.abs(lower - np.float32(0.1)) > (C + 32) * U * lower + C * tol.max()
        np.testing.assert_array_equal(rep.accepted[sure], z["step_accepted"][i][sure])
        mask_equal = np.array_equal(rep.accepted, z["step_accepted"][i])
        counts["masks_equal"] += mask_equal
        last = i + 1 == S or blocks[i + 1] != blocks[i]
        counts["last_steps"] += last
        if mask_equal and np.array_equal(stats[:, 2], z["step_denoiser"][i]) and not last:
            np.testing.assert_array_equal(rep.canvas, z["step_canvas_in"][i + 1])
            counts["canvases_checked"] += 1
        if follows:
            assert rep.stable == np.array_equal(z["step_argmax"][i], z["step_argmax"][i - 1])
        else:
            assert not rep.stable
        prev = i
    return counts


async def test_oracle_replay(device):
    """transformers' DiffusionGemma sampler (the tiny oracle's recorded steps) replayed through the kernels."""
    if not ORACLE.exists():
        pytest.skip(f"{ORACLE.name} is not in tests/fixtures")
    c = await replay_oracle(device, np.load(ORACLE))
    assert c["draws_clear"] > c["draws"] // 2 and c["draws_equal"] >= c["draws_clear"]
    # every step whose draws and mask all match, and that is not its block's last, checked its next canvas
    mismatched = (c["draws"] - c["draws_equal"]) + (c["steps"] - c["masks_equal"])
    assert c["canvases_checked"] >= c["steps"] - c["last_steps"] - mismatched > 0
