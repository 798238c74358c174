"""Rotary embedding (1-D, and the vision tower's 2-D), KV cache and attention (shaders/rope.wgsl,
kv_store.wgsl, attention_inputs.wgsl, attention.wgsl with its query source attention_q.wgsl or, decoding,
attention_decode_inputs.wgsl).

Per-run values come from a `Step` uniform buffer (shaders/common.wgsl; these kernels read pos and n_tokens, the
key count being pos + n_tokens) that the caller rewrites before each submit, so one recorded graph serves every decode step and every prefill chunk of up to
the recorded token capacity (the first dimension of the activation tensors). Everything else is a compile-time
constant of the kernels.

KV cache layout (one K and one V tensor per layer, see `kv_cache`): [n_kv_heads][slots] rows of head_dim values,
in one of two formats (KV_CACHE_TYPES): f16 (the default; packed two halves per u32 in the kernels, the same
bytes as an f16 array), or q8_0, about half the memory: blocks of 32 values as 32 signed bytes and a scale, as
llama.cpp's q8_0 cache quantises them (layout: shaders/kv_read_q8_0.wgsl; the scale kept in f32). The kernels
read and write either through a format library (shaders/kv_read_*.wgsl, kv_write_*.wgsl): attention's K/V
loads and the stores of attention_inputs and attention_decode are the same code for both. kv_store (the vision
tower's) writes f16 only. Position p lives in slot p % slots. A layer
whose cache holds the whole context (slots >= context) therefore stores p at slot p; a sliding-window layer
may use a ring of `kv_slots(ctx, window=, max_tokens=)` = window + max_tokens - 1 slots: the oldest key a query of the
current run can see is pos + 0 - (window - 1) and the newest key written is pos + n_tokens - 1, so that many
slots never overwrite a key still in use.

Dispatches per call: rope 1, rope_2d 1, kv_store 1 (K and V), attention_inputs 1 (q/k norms, RoPE, v norm and the
store together), attention 1 (prefill), 2 (decode: key splits + combine) or
3 (decode over a cache that can outgrow attention_plan's `short`: split kernels for short and long contexts,
one of which returns at once); attention_decode the same as attention, where the fused kernel applies (else
attention_inputs' one more).
"""

from __future__ import annotations

import math
import weakref


from ..gpu import Device, Graph, Tensor

from ._util import WG
from .nn import _count, _grid


def _tokens(t: Tensor, per_token: int, what: str) -> int:
    n = _count(t)
    if n % per_token:
        raise ValueError(f"{what} of shape {t.shape} is not a whole number of tokens of {per_token} values")
    return n // per_token


# -- rope ---------------------------------------------------------------------------------------------------


async def rope(g: Graph, x: Tensor, step: Tensor, *, n_heads: int, head_dim: int, base: float,
               n_rot: int | None = None, freq_factors: Tensor | None = None, freq_scale: float = 1.0,
               token_stride: int | None = None):
    """NeoX RoPE in place on x [n_tokens, n_heads, head_dim] at positions step.pos + t.

    Pair (i, i + n_rot/2), i < n_rot/2, turns by pos * freq_scale * base^(-2i/n_rot) / freq_factors[i]; dims
    from n_rot on are untouched. freq_factors (f32 [n_rot/2], llama.cpp's `rope_freqs`) divide the angle: Gemma
    4's proportional RoPE uses 1.0 for the rotated pairs and 1e30 for the rest. freq_scale is linear position
    scaling (Gemma 3 4B+ global layers: 1/8). token_stride (in heads, default n_heads) rotates the first
    n_heads heads of wider token rows, e.g. the q and k heads of a fused [n_tokens, q|k|v] projection.
    One dispatch; a thread per (token, pair) applies one cos/sin to every head."""
    n_rot = head_dim if n_rot is None else n_rot
    if n_rot % 2 or n_rot > head_dim:
        raise ValueError(f"n_rot {n_rot} must be even and <= head_dim {head_dim}")
    stride = (token_stride or n_heads) * head_dim
    max_t = _tokens(x, stride, "rope input")
    consts = dict(NH=n_heads, HD=head_dim, NROT=n_rot, TSTRIDE=stride, LOG2_BASE=math.log2(base),
                  FREQ_SCALE=float(freq_scale), MAXT=max_t, WG=64)
    if freq_factors is None:
        k = await g.device.kernel("rope", libs=("rope_lib",), entry="main", **consts)
        binds = [x, step]
    else:
        k = await g.device.kernel("rope", libs=("rope_lib",), entry="main_ff", **consts)
        binds = [x, step, freq_factors]
    g.add(k, binds, _grid(max_t * (n_rot // 2), 64))


async def rope_2d(g: Graph, x: Tensor, positions: Tensor, *, n_heads: int, head_dim: int, base: float,
                  token_stride: int | None = None):
    """Axial 2-D NeoX RoPE (Gemma 4's vision tower) in place on x f32 [n_tokens, n_heads, head_dim].

    positions: u32 [n_tokens, 2], (px, py) per token, written by the host. With q = head_dim / 4 and
    inv_i = base^(-2i / (head_dim / 2)), i < q: pair (i, i + q) turns by px * inv_i, and pair
    (head_dim/2 + i, head_dim/2 + i + q) by py * inv_i (Gemma 4: base 100). Every token of x's capacity is
    turned (no Step): rows past the image get whatever positions the host left there, harmlessly.
    token_stride as in `rope`. One dispatch; a thread per (token, axis, pair) applies one cos/sin to every head."""
    if head_dim % 4:
        raise ValueError(f"head_dim {head_dim} must be a multiple of 4 (two axes of NeoX pairs)")
    stride = (token_stride or n_heads) * head_dim
    max_t = _tokens(x, stride, "rope_2d input")
    if _count(positions) < 2 * max_t:
        raise ValueError(f"positions of shape {positions.shape} hold fewer than {max_t} (px, py) pairs")
    k = await g.device.kernel("rope", libs=("rope_lib",), entry="axial", NH=n_heads, HD=head_dim, NROT=head_dim, TSTRIDE=stride,
                              LOG2_BASE=math.log2(base), FREQ_SCALE=1.0, MAXT=max_t, WG=64)
    g.add(k, [x, positions], _grid(max_t * (head_dim // 2), 64))


# -- KV cache -----------------------------------------------------------------------------------------------


def kv_slots(ctx: int, *, window: int = 0, max_tokens: int = 1) -> int:
    """Slots a layer's cache needs: the whole context, or for a sliding-window layer a ring just large enough
    for runs of up to max_tokens tokens (window + max_tokens - 1), whichever is smaller."""
    if window <= 0:
        return ctx
    return min(ctx, window + max_tokens - 1)


KV_CACHE_TYPES = ("f16", "q8_0")
_KV_DTYPE = {"f16": "float16", "q8_0": "kv_q8_0"}  # the Tensor dtype of each format's caches


def check_kv_cache_type(cache_type: str, head_dim: int) -> None:
    """Raises ValueError, with a sentence for the user, unless caches of `cache_type` can hold heads of head_dim."""
    if cache_type not in KV_CACHE_TYPES:
        raise ValueError(f"KV cache type {cache_type!r} is not supported; choose one of {', '.join(KV_CACHE_TYPES)}")
    if cache_type == "q8_0" and head_dim % 32:
        raise ValueError(f"a q8_0 KV cache needs heads of a multiple of 32 values (its blocks); this model's are "
                         f"{head_dim}: use the f16 cache")


def kv_cache_bytes(n_kv_heads: int, head_dim: int, slots: int, cache_type: str = "f16") -> int:
    """Bytes of ONE of a layer's K or V caches: f16, 2 bytes a value; q8_0, 36 bytes a block of 32 values."""
    check_kv_cache_type(cache_type, head_dim)
    per_row = head_dim * 2 if cache_type == "f16" else head_dim // 32 * 36
    return n_kv_heads * slots * per_row


def kv_cache(device: Device, *, n_kv_heads: int, head_dim: int, slots: int, label: str = "kv",
             cache_type: str = "f16") -> tuple[Tensor, Tensor]:
    """A layer's (K, V) caches of shape [n_kv_heads, slots, head_dim] in the format `cache_type`, zero-filled:
    f16 (numpy float16), or q8_0 (Tensor dtype "kv_q8_0": raw bytes, see kv_read_q8_0.wgsl)."""
    shape = (n_kv_heads, slots, head_dim)
    nwords = kv_cache_bytes(n_kv_heads, head_dim, slots, cache_type) // 4
    caches = []
    for name in ("k", "v"):
        t = device.tensor((nwords,), "uint32", f"{label}.{name}")
        caches.append(Tensor(shape, _KV_DTYPE[cache_type], t.parts, t.label))
    return caches[0], caches[1]


def kv_cache_type(cache_k: Tensor, cache_v: Tensor | None = None) -> str:
    """The format ("f16" or "q8_0") of a cache kv_cache made; K and V must share it."""
    types = {"float16": "f16", "kv_q8_0": "q8_0"}
    found = [types.get(c.dtype) for c in (cache_k, cache_v) if c is not None]
    if None in found:
        raise ValueError(f"cache {cache_k.label!r} ({cache_k.dtype}) is not a KV cache made by kv_cache")
    if len(set(found)) > 1:
        raise ValueError(f"the K and V caches differ in format ({found[0]} and {found[1]})")
    return found[0]


def _kv_libs(cache_type: str, write: bool = False) -> tuple:
    """The shader libraries that read (and write) a cache of this format."""
    if cache_type == "f16":
        return ("kv_read_f16", "kv_lib", "kv_write_f16") if write else ("kv_read_f16",)
    return ("kv_read_q8_0", "kv_write_q8_0") if write else ("kv_read_q8_0",)


async def kv_store(g: Graph, k: Tensor, v: Tensor, cache_k: Tensor, cache_v: Tensor, step: Tensor, *,
                   n_kv_heads: int, head_dim: int, max_ctx: int):
    """Append this run's K and V rows (f32 [n_tokens, n_kv_heads, head_dim]) to the caches at positions
    step.pos.. (slot = position % max_ctx, max_ctx = the caches' slot count). One dispatch for both."""
    if head_dim % 2:
        raise ValueError("head_dim must be even")
    max_t = _tokens(k, n_kv_heads * head_dim, "k")
    if kv_cache_type(cache_k, cache_v) != "f16":
        raise ValueError("kv_store writes f16 caches only (the vision tower's); q8_0 caches are written by "
                         "attention_inputs and attention_decode")
    expect = kv_cache_bytes(n_kv_heads, head_dim, max_ctx)
    for c in (cache_k, cache_v):
        if c.nbytes < expect:
            raise ValueError(f"cache {c.label!r} holds {c.nbytes} bytes; {max_ctx} slots need {expect}")
    kern = await g.device.kernel("kv_store", libs=("kv_lib",), NKV=n_kv_heads, HD=head_dim, CAP=max_ctx, MAXT=max_t, WG=WG)
    g.add(kern, [k, v, cache_k, cache_v, step], _grid(max_t * n_kv_heads * head_dim // 2, WG))


_ATTENTION_INPUTS_LIBS = ("rope_lib", "workgroup_sum")


async def attention_inputs(g: Graph, qkv: Tensor, q_norm: Tensor, q: Tensor, step: Tensor, *, n_heads: int,
                           head_dim: int, eps: float, base: float, n_rot: int | None = None,
                           freq_factors: Tensor | None = None, freq_scale: float = 1.0, qkv_stride: int,
                           kv: tuple | None = None):
    """Gemma's attention inputs for this run's tokens from one [q | k | v] projection, in one dispatch
    (shaders/attention_inputs.wgsl):
        q = rope(rms_norm(q_lin) * q_norm)   into q, f32 [n_tokens, n_heads, head_dim]
        k = rope(rms_norm(k_lin) * k_norm)   and v = rms_norm(v_lin) (v_norm) or v_lin, into the layer's f16
                                             caches at slot (step.pos + t) % slots, as kv_store writes them.
    qkv: f32 rows of qkv_stride values per token, the query heads first. kv = (k_norm, cache_k, cache_v, dict(
    n_kv_heads=, k_offset=, v_offset=, slots=, v_norm=)), or None for a layer that reads another layer's cache
    (queries only). v_offset may equal k_offset (a layer whose value is its key projection). RoPE as `rope`."""
    n_rot = head_dim if n_rot is None else n_rot
    if head_dim % 2 or n_rot % 2 or n_rot > head_dim:
        raise ValueError(f"attention_inputs: head_dim {head_dim} and n_rot {n_rot} must be even, n_rot <= head_dim")
    max_t = _tokens(qkv, qkv_stride, "qkv")
    if _count(q) < max_t * n_heads * head_dim:
        raise ValueError(f"attention_inputs: q of shape {q.shape} is smaller than {max_t} tokens x {n_heads} heads")
    consts = dict(NH=n_heads, HD=head_dim, NROT=n_rot, QKV_STRIDE=qkv_stride, MAXT=max_t, EPS=float(eps),
                  FF=freq_factors is not None, LOG2_BASE=math.log2(base), FREQ_SCALE=float(freq_scale),
                  WG=64 if head_dim <= 256 else 128)
    ff = freq_factors if freq_factors is not None else q_norm
    binds = [qkv, q_norm, ff, q, step]
    if kv is None:
        libs = _ATTENTION_INPUTS_LIBS + _kv_libs("f16", write=True)  # declared, not used: no cache here
        k = await g.device.kernel("attention_inputs", libs=libs, entry="queries", NKV=0, K_OFF=0,
                                  V_OFF=0, CAP=1, V_NORM=False, **consts)
        g.add(k, binds + [q_norm], (n_heads, max_t))  # the key norm's binding is declared, never read here
        return
    k_norm, cache_k, cache_v, layout = kv
    nkv, k_off, v_off, slots = (layout[n] for n in ("n_kv_heads", "k_offset", "v_offset", "slots"))
    if max(n_heads * head_dim, k_off + nkv * head_dim, v_off + nkv * head_dim) > qkv_stride:
        raise ValueError(f"attention_inputs: heads do not fit rows of {qkv_stride} (k at {k_off}, v at {v_off})")
    cache_type = kv_cache_type(cache_k, cache_v)
    expect = kv_cache_bytes(nkv, head_dim, slots, cache_type)
    for c in (cache_k, cache_v):
        if c.nbytes < expect:
            raise ValueError(f"cache {c.label!r} holds {c.nbytes} bytes; {slots} slots need {expect}")
    libs = _ATTENTION_INPUTS_LIBS + _kv_libs(cache_type, write=True)
    k = await g.device.kernel("attention_inputs", libs=libs, entry="main", NKV=nkv, K_OFF=k_off,
                              V_OFF=v_off, CAP=slots, V_NORM=bool(layout["v_norm"]), **consts)
    g.add(k, binds + [k_norm, cache_k, cache_v], (n_heads + 2 * nkv, max_t))


# -- attention ----------------------------------------------------------------------------------------------

# Scratch for split partials, shared by every attention call of a device with the same size (the dispatches of
# a graph run in order, so layers can reuse one buffer). Keyed weakly so a destroyed device frees it.
_SCRATCH: "weakref.WeakKeyDictionary[Device, dict]" = weakref.WeakKeyDictionary()

_SPLIT_TARGET = 256          # aim for about this many workgroups at full context (2+ per SM on big GPUs)
_SPLIT_BYTES = 64 << 20      # cap on the partial-accumulator scratch
_SHORT = 8192                # decode contexts up to this use small key tiles (see attention_plan)


def _scratch(device: Device, nbytes: int, label: str) -> Tensor:
    pool = _SCRATCH.setdefault(device, {})
    key = (label, nbytes)
    if key not in pool:
        pool[key] = device.tensor((nbytes // 4,), "float32", label)
    return pool[key]


def attention_plan(device: Device, *, n_tokens: int, n_heads: int, n_kv_heads: int, head_dim: int,
                   window: int, max_ctx: int, splits: int | None = None, wg: int | None = None,
                   kt: int | None = None, short: int = _SHORT) -> dict:
    """Tile sizes and the dispatches attention() records (exposed for tests and benchmarks)."""
    hd8 = head_dim // 8
    if head_dim % 8 or hd8 & (hd8 - 1):
        raise ValueError(f"head_dim {head_dim} must be 8 times a power of two")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
    group = n_heads // n_kv_heads
    # Threads per workgroup: at least one per 16-byte piece of a cache row (the P.V step).
    wg = max(wg or (128 if head_dim >= 128 else 64), hd8)
    # Rows per workgroup: 8 (two "row quads"; the kernel keeps per-row state in vec4 lanes) when there are more
    # than 4 and the q tile fits workgroup memory with the rest (R * WG * 4 + WG * 4 bytes more), else 4. More
    # rows only save K/V re-reads, which hit L2 anyway: the scoring loop costs the same 2 workgroup-memory
    # loads per 8 FMAs at any R, while registers (8R accumulators per thread) grow with R.
    budget = min(device.limits.get("max-compute-workgroup-storage-size", 16384), 48 << 10)
    rows_max = n_tokens * group
    r = 8 if rows_max > 4 else 4
    while r * head_dim * 4 + r * wg * 4 + wg * 4 + 64 > budget:
        if r == 4:
            raise ValueError(f"head_dim {head_dim}: the attention tile does not fit {budget} bytes of workgroup memory")
        r = 4
    row_tiles = -(-rows_max // r)
    max_keys = min(max_ctx, window + n_tokens - 1) if window > 0 else max_ctx
    # Keys per tile. Prefill: one per thread. Decode with a short context (sliding layers, or any layer while
    # it holds at most `short` keys): 32-key tiles with WG / 32 threads per key, so the few keys there are
    # spread over more workgroups and each thread waits on fewer loads in a row. Long contexts keep full tiles
    # (fewer barriers per key; the work fills the GPU anyway). On an H100 (hd 512, 8 heads): 1K keys 20 us
    # with 32-key tiles vs 92 us; 32K keys 234 us vs 63 us. A decode graph whose cache can outgrow `short`
    # records both split kernels, each returning at once when the context is the other's (short_split).
    small_ok = n_tokens == 1 and hd8 % (wg // 32) == 0 and wg >= 32
    short_split = kt is None and splits is None and small_ok and max_keys > short
    if kt is None:
        kt = 32 if small_ok and max_keys <= short else wg
    if wg % kt or hd8 % (wg // kt) or kt & (kt - 1):
        raise ValueError(f"keys per tile {kt}: must be a power of two dividing {wg}, with {wg // kt} dividing {hd8}")
    if splits is None:
        nsplit = -(-_SPLIT_TARGET // (row_tiles * n_kv_heads))
        nsplit = max(1, min(nsplit, -(-max_keys // (32 if short_split else kt)), 1024))
        per_split = n_tokens * n_heads * (head_dim + 2) * 4
        nsplit = max(1, min(nsplit, _SPLIT_BYTES // per_split))
        align = kt
    else:
        nsplit, align = int(splits), 1
    return dict(group=group, wg=wg, kt=kt, rows=r, row_tiles=row_tiles, splits=nsplit, align=align,
                short_split=short if short_split and nsplit > 1 else 0,
                dispatches=1 if nsplit == 1 else 3 if short_split else 2)


async def attention(g: Graph, q: Tensor, cache_k: Tensor, cache_v: Tensor, out: Tensor, step: Tensor, *,
                    n_heads: int, n_kv_heads: int, head_dim: int, scale: float, window: int = 0, max_ctx: int,
                    causal: bool = True, splits: int | None = None, wg: int | None = None, kt: int | None = None,
                    short: int = _SHORT):
    """out = softmax(scale * q k^T + mask) v for q, out f32 [n_tokens, n_heads, head_dim] at positions
    step.pos + t, over the keys 0..step.pos + n_tokens - 1 already stored by kv_store (GQA: q head h uses kv
    head h // (n_heads / n_kv_heads)). Causal; with window > 0 a key k is visible to position p iff
    p - k < window. max_ctx is the caches' slot count (see kv_slots; key k is read from slot k % max_ctx).
    Output rows of tokens past step.n_tokens are not written.

    causal=False (a vision tower): every query of the run sees every key 0..step.pos + n_tokens - 1, with no
    mask, and the caches must hold all those keys (max_ctx >= step.pos + n_tokens, e.g. a cache of max_ctx = the
    token capacity, written by kv_store at pos 0). causal=False with window > 0 (DiffusionGemma's canvas on a
    sliding layer): the run's own keys and the window - 1 keys before it, step.pos - (window - 1) on, as
    transformers' sliding-window cache keeps them.

    Dispatches: 1 when there are enough (token, head) rows to fill the GPU without cutting the keys (prefill),
    else 2 (flash-decoding: key splits, then a combine), or 3 for decode over a cache that can hold more than
    `short` keys (two split kernels, tiled for short and long contexts; the one not meant for the current
    length returns at once). `splits`, `wg` (threads per workgroup), `kt` (keys per tile) and `short` override
    the plan, for tests and tuning."""
    max_t = _tokens(q, n_heads * head_dim, "q")
    plan = attention_plan(g.device, n_tokens=max_t, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                          window=window, max_ctx=max_ctx, splits=splits, wg=wg, kt=kt, short=short)
    consts = _attention_consts(plan, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, scale=scale,
                               window=window, max_ctx=max_ctx, causal=causal, max_t=max_t)
    cache_type = kv_cache_type(cache_k, cache_v)
    check_kv_cache_type(cache_type, head_dim)
    await _record_attention(g, plan, consts, (*_kv_libs(cache_type), "attention_q"), q, cache_k, cache_v, out, step)


def _attention_consts(plan: dict, *, n_heads, n_kv_heads, head_dim, scale, window, max_ctx, causal, max_t) -> dict:
    return dict(HD=head_dim, G=plan["group"], NH=n_heads, NKV=n_kv_heads, R=plan["rows"], WG=plan["wg"],
                KT=plan["kt"], NSPLIT=plan["splits"], ALIGN=plan["align"], CAP=max_ctx, WINDOW=window,
                CAUSAL=bool(causal), SCALE=float(scale), MAXT=max_t, NKV_MIN=0, NKV_MAX=0xFFFFFFFF)


async def _record_attention(g: Graph, plan: dict, consts: dict, libs: tuple, src: Tensor, cache_k: Tensor,
                            cache_v: Tensor, out: Tensor, step: Tensor, extra=(), source_consts=None) -> None:
    """The plan's dispatches over the queries' source `src` (binding 0; `libs` says what it is, with
    `source_consts` for it) and `extra` bindings from 6 on (attention_decode_inputs.wgsl's). The combine reads
    only the splits: it takes neither."""
    nsplit = plan["splits"]
    attend = dict(consts, **(source_consts or {}))
    tail = [None, *extra] if extra else []  # binding 5 (the split's maxima) is not the main entry's
    grid = (plan["row_tiles"], consts["NKV"], nsplit)
    if nsplit == 1:
        k = await g.device.kernel("attention", libs=libs, entry="main", **attend)
        g.add(k, [src, cache_k, cache_v, step, out, *tail], grid)
        return
    rows = consts["MAXT"] * consts["NH"]
    part = _scratch(g.device, nsplit * rows * consts["HD"] * 4, "attention.partials")
    ml = _scratch(g.device, nsplit * rows * 8, "attention.maxsum")
    if plan["short_split"]:  # small tiles while the context is short, the plan's tiles beyond
        small = dict(attend, KT=32, ALIGN=32, NKV_MAX=plan["short_split"])
        k = await g.device.kernel("attention", libs=libs, entry="split", **small)
        g.add(k, [src, cache_k, cache_v, step, part, ml, *extra], grid)
        consts = dict(consts, NKV_MIN=plan["short_split"] + 1)
        attend = dict(attend, NKV_MIN=plan["short_split"] + 1)
    k = await g.device.kernel("attention", libs=libs, entry="split", **attend)
    g.add(k, [src, cache_k, cache_v, step, part, ml, *extra], grid)
    # The combine reads no cache: one pipeline for both formats.
    c = await g.device.kernel("attention", libs=(*_kv_libs("f16"), "attention_q"), entry="combine", **consts)
    g.add(c, [part, ml, step, out], (rows, consts["HD"] // 4 // min(consts["HD"] // 4, 16)))


async def attention_decode(g: Graph, qkv: Tensor, q_norm: Tensor, q: Tensor, cache_k: Tensor, cache_v: Tensor,
                           out: Tensor, step: Tensor, *, n_heads: int, n_kv_heads: int, head_dim: int, scale: float,
                           window: int = 0, max_ctx: int, eps: float, base: float, n_rot: int | None = None,
                           freq_factors: Tensor | None = None, freq_scale: float = 1.0, qkv_stride: int,
                           kv: tuple | None = None, splits: int | None = None, short: int = _SHORT) -> None:
    """attention_inputs, then causal attention over cache_k / cache_v, for a run of one token (decode), with
    the inputs' work done inside attention's kernels (shaders/attention_decode_inputs.wgsl): one dispatch fewer.

    Arguments as those two ops take them; kv = (k_norm, cache_k, cache_v, layout) as attention_inputs takes it,
    its caches the ones attention reads (a layer with a cache of its own), or None (a layer reading another
    layer's cache: queries only). q is the two ops' scratch where the fused kernel does not apply: a run
    of more than one token, query heads of one kv head over several row tiles, or a key row too long for
    the kernel's scratch; those record attention_inputs and attention as they are."""
    max_t = _tokens(qkv, qkv_stride, "qkv")
    n_rot = head_dim if n_rot is None else n_rot
    plan = attention_plan(g.device, n_tokens=max_t, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                          window=window, max_ctx=max_ctx, splits=splits, short=short)
    k_off = v_off = 0
    cache_type = kv_cache_type(cache_k, cache_v)
    check_kv_cache_type(cache_type, head_dim)
    if kv is not None:
        if kv[1] is not cache_k or kv[2] is not cache_v:
            raise ValueError("attention_decode: kv must store into the caches attention reads")
        k_off, v_off = kv[3]["k_offset"], kv[3]["v_offset"]
        if kv[3]["slots"] != max_ctx or kv[3]["n_kv_heads"] != n_kv_heads:
            raise ValueError(f"attention_decode: the cache layout {kv[3]} is not the one attention reads "
                             f"({n_kv_heads} kv heads, {max_ctx} slots)")
        expect = kv_cache_bytes(n_kv_heads, head_dim, max_ctx, cache_type)
        for c in (cache_k, cache_v):
            if c.nbytes < expect:
                raise ValueError(f"cache {c.label!r} holds {c.nbytes} bytes; {max_ctx} slots need {expect}")
    fused = (max_t == 1 and plan["row_tiles"] == 1 and plan["rows"] * plan["wg"] >= head_dim
             and n_rot % 2 == 0 and k_off % 4 == 0 and v_off % 4 == 0)
    if not fused:
        await attention_inputs(g, qkv, q_norm, q, step, n_heads=n_heads, head_dim=head_dim, eps=eps, base=base,
                               n_rot=n_rot, freq_factors=freq_factors, freq_scale=freq_scale, qkv_stride=qkv_stride,
                               kv=kv)
        await attention(g, q, cache_k, cache_v, out, step, n_heads=n_heads, n_kv_heads=n_kv_heads,
                        head_dim=head_dim, scale=scale, window=window, max_ctx=max_ctx, splits=splits, short=short)
        return
    if max(n_heads * head_dim, k_off + n_kv_heads * head_dim, v_off + n_kv_heads * head_dim) > qkv_stride:
        raise ValueError(f"attention_decode: heads do not fit rows of {qkv_stride} (k at {k_off}, v at {v_off})")
    consts = _attention_consts(plan, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, scale=scale,
                               window=window, max_ctx=max_ctx, causal=True, max_t=1)
    source = dict(HAS_KV=kv is not None, K_OFF=k_off, V_OFF=v_off, V_NORM=bool(kv and kv[3]["v_norm"]),
                  NORM_EPS=float(eps), NROT=n_rot, FF=freq_factors is not None, LOG2_BASE=math.log2(base),
                  FREQ_SCALE=float(freq_scale))
    extra = [q_norm, kv[0] if kv is not None else q_norm, freq_factors if freq_factors is not None else q_norm]
    libs = ("rope_lib", "workgroup_sum", *_kv_libs(cache_type, write=True), "attention_decode_inputs")
    await _record_attention(g, plan, consts, libs, qkv, cache_k, cache_v, out, step, extra, source)


# -- short bidirectional self-attention in f32 ---------------------------------------------------------------

SELF_ATTENTION_MAX = 512  # score slots per workgroup (2 KiB of workgroup memory): Kokoro's PL-BERT context


async def self_attention(g: Graph, q: Tensor, k: Tensor, v: Tensor, out: Tensor, length: Tensor, *, n_heads: int,
                         head_dim: int, scale: float):
    """out[t, h] = softmax_j(scale q[t, h] . k[j, h]) v[j, h] over the keys j < length.n_tokens, every query
    seeing every key (no mask), in f32 throughout (shaders/self_attention.wgsl). q, k, v, out: f32 [rows,
    n_heads, head_dim] with rows <= 512 (Kokoro's PL-BERT: 12 heads of 64); rows t >= n are written as 0.
    One dispatch: a workgroup per (row, head)."""
    per_row = n_heads * head_dim
    rows = _tokens(q, per_row, "q")
    for t, what in ((k, "k"), (v, "v"), (out, "out")):
        if _tokens(t, per_row, what) != rows:
            raise ValueError(f"self_attention: {what} of shape {t.shape} does not match q {q.shape}")
    if rows > SELF_ATTENTION_MAX:
        raise ValueError(f"self_attention handles at most {SELF_ATTENTION_MAX} rows, not {rows}")
    wg = 64 if head_dim <= 64 else 128
    kern = await g.device.kernel("self_attention", H=n_heads, D=head_dim, ROWS=rows, MAXN=max(rows, 1),
                                 SCALE=float(scale), WG=wg)
    g.add(kern, [q, k, v, out, length], (rows, n_heads, 1))
