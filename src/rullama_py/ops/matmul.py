"""Weight ops on weights kept quantised on the GPU as their raw GGUF bytes (shaders/matvec.wgsl,
shaders/matmul.wgsl, shaders/embed.wgsl; per-type dequantisers in shaders/quant/).

A weight is a Tensor of shape (rows, cols) = (out_features, in_features), dtype a GGUF type name (see
`QUANT_TYPES`; numpy's "float32" / "float16" are accepted too), uploaded with `Device.upload_rows`. A large
weight is split by rows into parts, separate buffers; every op records one dispatch per part, telling the
kernel the part's first row as a constant (ROW0) rather than binding at an offset, since parts are whole
buffers and storage-binding offsets must be 256-byte aligned anyway.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from ..gpu import Device, Graph, Tensor

# GGUF type name -> (weights per block, bytes per block). Float types are "blocks" of one element here; the
# shaders group them by 8 (quant/f32.wgsl).
QUANT_TYPES = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q5_0": (32, 22),
    "q4_k": (256, 144),
    "q5_k": (256, 176),
    "q6_k": (256, 210),
}
_ALIASES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
_LIBS = {"q4_k": ("quant/k_scales",), "q5_k": ("quant/k_scales",)}

_MAX_GRID = 65535  # WebGPU's guaranteed workgroups per dimension; more wrap into y


def qtype(t: Tensor) -> str:
    """The GGUF type name of weight `t`, lower case."""
    name = str(getattr(t.dtype, "name", t.dtype)).lower()
    name = _ALIASES.get(name, name)
    if name not in QUANT_TYPES:
        raise ValueError(f"weight {t.label!r}: unsupported type {t.dtype!r} (supported: {', '.join(QUANT_TYPES)})")
    return name


def row_bytes(qt: str, cols: int) -> int:
    """Bytes of one row of `cols` weights of GGUF type `qt`."""
    blk, size = QUANT_TYPES[qt]
    if cols % blk:
        raise ValueError(f"{qt} rows hold whole blocks of {blk} weights; {cols} columns is not a multiple")
    return cols // blk * size


def _libs(qt: str) -> tuple:
    return ("quant/bytes", *_LIBS.get(qt, ()), f"quant/{qt}")


def _grid(n: int) -> tuple[int, int]:
    """(x, y) workgroups covering `n` with x <= 65535; the kernels skip the y * x + x' >= n padding."""
    gy = -(-n // _MAX_GRID)
    return -(-n // gy), gy


def _check(t: Tensor, n: int, what: str) -> None:
    total = 1
    for d in t.shape:
        total *= d
    if total < n:
        raise ValueError(f"{what} {t.label!r} of shape {t.shape} holds {total} values; needs {n}")


@dataclass(frozen=True)
class StreamNorm:
    """A matrix-vector product's input formed in its prologue from the residual stream (one token), instead of
    by norm dispatches before it (shaders/matvec_stream_norm.wgsl):

        stream_out = (stream + rms_norm(delta) * delta_norm) * scale     the block's post-norm and residual add
        x          = rms_norm(stream_out) * input_norm                    the next block's input norm
        x          = stream_out                                           input_norm None

    rms_norm(v) = v * rsqrt(mean(v^2) + eps); scale: a 1-value tensor (Gemma 4's layer_output_scale) or None.
    stream_out must be another buffer than stream (the product's first workgroup writes it while the others
    read stream). All are f32 rows of the product's columns. Several products may take the same StreamNorm
    (q, k and v as two weights, a weight in parts): each forms the same input, and writes the same stream_out
    (the same kernel shape sums in the same order)."""

    stream: Tensor
    delta: Tensor
    delta_norm: Tensor
    stream_out: Tensor
    input_norm: Tensor | None = None
    scale: Tensor | None = None
    eps: float = 1e-6


_PROLOGUE_PV = 4  # vec4s of the stream a lane holds in the prologue (matvec_stream_norm.wgsl's Lane4)
_PROLOGUE_MAX_WG = 256


def stream_norm_fits(device, cols: int) -> bool:
    """Whether a matrix-vector product over rows of `cols` values can take a StreamNorm prologue on `device`:
    the row whole in workgroup memory beside the kernel's own, at most _PROLOGUE_PV vec4s a lane of 256."""
    wg = _PROLOGUE_MAX_WG
    need = 4 * cols + 16 * wg + 4 * wg  # X, the reduction's vec4s (matvec.wgsl's worst case), workgroup_sum's
    return (cols % 8 == 0 and cols <= 4 * _PROLOGUE_PV * wg
            and need <= device.limits.get("max-compute-workgroup-storage-size", 16384))


# (WG, R, LPR) of the matrix-vector products with a StreamNorm prologue, by epilogue; tools and tests set it.
MATVEC_PROLOGUE_SHAPE = {0: (128, 2, 32), 1: (256, 2, 16), 2: (128, 1, 32)}


def _prologue_shape(cols: int, epi: int) -> tuple[int, int, int]:
    """Every workgroup of a product with a prologue reads the stream's four rows from L2 and reduces them
    twice, so those products take several rows a workgroup (E2B's 2,560-row q/k/v: 320 workgroups of 8 rows,
    where the plain kernel runs one row each), and as many lanes as leave at most 4 vec4s of the stream each."""
    wg, r, lpr = MATVEC_PROLOGUE_SHAPE[epi]
    while cols > 4 * _PROLOGUE_PV * wg:
        wg, lpr = 2 * wg, 2 * lpr
    return wg, r, min(lpr, wg)


# (WG, R[, LPR]) forced for every matvec, or None: for tools/bench_matmul.py --sweep and the tests only.
MATVEC_SHAPE_OVERRIDE: tuple | None = None


def _matvec_shape(cols: int, rows: int, qt: str) -> tuple[int, int, int]:
    """(WG, R, LPR): lanes per workgroup, rows per row group, lanes per row group for the matvec kernel.

    Measured on an H100 (tools/bench_matmul.py --sweep, Gemma 4 E2B shapes, Q4_K / Q6_K / Q8_0): 128 lanes
    beat 64 and 256 for rows of 1536 to 6144 columns. Up to a few thousand rows, one row group per workgroup
    (LPR = WG) with 1 row (< 4096 rows) or 4 rows (the activation loads and their sums shared by 4 rows) is
    best: those calls are latency-bound and need many lanes per row. The 262144-row head runs 15-25 % faster
    with 4 groups of 32 lanes, each lane taking 3 units of 4 rows, than with 128 lanes a row. Very short rows
    (Gemma 3 270M: 640 columns) take 64 lanes. On the H200 (docs/bench/2026-12-02-matvec-sweep-q4k-h200.json),
    the 12288 x 1536 Q4_K product (E2B's gate and up as one weight) takes 11.4 us with 4 row groups of 32 lanes
    a workgroup against 13.7-18.5 us with one row group: 8192 rows and more of short rows (up to 128 units) get
    that shape."""
    if MATVEC_SHAPE_OVERRIDE is not None:
        wg, r, *lpr = MATVEC_SHAPE_OVERRIDE
        return wg, r, (lpr[0] if lpr else wg)
    blk = QUANT_TYPES[qt][0]
    per_block = {"f32": 1, "f16": 1, "bf16": 1, "q8_0": 4, "q4_0": 4, "q5_0": 4}.get(qt, 16)
    units = cols // max(blk, 8) * per_block
    wg = 64 if units <= 128 else 128 if units <= 1024 else 256
    if rows < 4096:
        return wg, 1, wg
    if rows < 32768 and rows >= 8192 and units <= 128:
        return 128, 1, 32
    if rows < 32768:
        return wg, 4, wg
    return wg, 4, min(wg, 32)


# (RPT, TPT) forced for every tiled matmul, or None: for tools/bench_vision.py and the tests only.
MATMUL_BLOCK_OVERRIDE: tuple | None = None


def _matmul_block(device, rows: int, n_tokens: int) -> tuple[int, int, int]:
    """(RPT, TPT, TK): rows and tokens per lane and the k-step of the tiled matmul (shaders/matmul.wgsl).
    8 x 8 blocks (128 x 128 tiles, TK 16: 16 KiB of workgroup memory, WebGPU's guaranteed minimum) do a
    quarter of the workgroup loads per multiply-add of 4 x 4 blocks; they pay off when the product is large
    enough to give a large GPU's multiprocessors work (100 tiles or more). Measured on an H200: the vision tower
    over 2394 patches (114 to 456 tiles) takes 82.7 ms with 8 x 8 blocks and 108 ms with 4 x 4; the audio tower
    over 750 tokens takes 61.8 ms when its 48- and 96-tile products keep 4 x 4 blocks (64 x 64 tiles, TK 32, four
    times as many tiles) and 76.9 ms when they use 8 x 8. In a 256-token prefill chunk of E2B, the 24576-row
    gate_up product ran at 11.8 TFLOPS with 4 x 4 blocks (1536 tiles); such products take 8 x 8 from 256
    tokens on. Prefill chunks of 64 tokens (software GPUs) keep 4 x 4."""
    if MATMUL_BLOCK_OVERRIDE is not None:
        rpt, tpt = MATMUL_BLOCK_OVERRIDE
    elif n_tokens >= 256 and rows >= 128 and -(-rows // 128) * -(-n_tokens // 128) >= 100:
        rpt, tpt = 8, 8  # enough 128 x 128 tiles to keep a large GPU's multiprocessors busy
    else:
        rpt, tpt = 4, 4
    tk = 32 if rpt * tpt == 16 else 16
    if (16 * (rpt + tpt)) * tk * 4 > device.limits.get("max-compute-workgroup-storage-size", 16384):
        tk = 16 if tk == 32 else 8
    return rpt, tpt, tk


# Split K (matmul.wgsl KSPLIT, matmul_reduce.wgsl). Forced for every tiled product with a Step, or None: tests.
MATMUL_KSPLIT_OVERRIDE: int | None = None
_SPLIT_TARGET = 512  # workgroups to aim for: several per multiprocessor on a GPU of a hundred
_SPLIT_MIN_STEPS = 8  # k-steps each split walks at least
_SPLIT_SCRATCH_BYTES = 16 << 20  # the partial sums of one product: one buffer per device, shared by all
_split_scratch: "weakref.WeakKeyDictionary[Device, Tensor]" = weakref.WeakKeyDictionary()


def _k_splits(device, rows: int, n_tokens: int, cols: int, rpt: int, tpt: int, tk: int) -> int:
    """How many column ranges a tiled product is cut into (1: none). Products with few output tiles (a prefill
    chunk's 1536-row outputs: 24 row tiles) are cut until about _SPLIT_TARGET workgroups run, each walking at
    least _SPLIT_MIN_STEPS k-steps, within the scratch. A GPU emulated on the CPU gains nothing from it."""
    if MATMUL_KSPLIT_OVERRIDE is not None:
        return max(1, min(MATMUL_KSPLIT_OVERRIDE, -(-cols // tk)))
    if device.software:
        return 1
    tiles = -(-rows // (16 * rpt)) * -(-n_tokens // (16 * tpt))
    splits = min(-(-_SPLIT_TARGET // tiles), -(-cols // tk) // _SPLIT_MIN_STEPS,
                 _SPLIT_SCRATCH_BYTES // (4 * rows * n_tokens))
    return max(1, splits)


def _scratch(device) -> Tensor:
    t = _split_scratch.get(device)
    if t is None:
        t = _split_scratch[device] = device.tensor((_SPLIT_SCRATCH_BYTES // 4,), "float32", "matmul.split_k")
    return t


async def matmul(g: Graph, w: Tensor, x: Tensor | None, out: Tensor, *, n_tokens: int, accumulate: bool = False,
                 scale: float = 1.0, out_offset: int = 0, out_stride: int | None = None,
                 step: Tensor | None = None, prologue: StreamNorm | None = None) -> None:
    """out[t, out_offset + r] (+)= scale * sum_c W[r, c] * x[t, c] for t < n_tokens.

    w: weight (rows, cols), any of QUANT_TYPES, possibly split in parts; x: f32 [n_tokens, cols];
    out: f32 with rows of out_stride values (default: rows), a different buffer from x; out_offset and
    out_stride let several products fill the column ranges of one wider output (Gemma's [q | k | v] when the
    three weights cannot be uploaded as one). accumulate=True adds into out (fused residual).
    One token runs the memory-bound matrix-vector kernel; more run the tiled matrix-matrix kernel. step (the
    Step uniform of a recorded graph): n_tokens is the capacity, and each run computes only step.n_tokens of
    them, so a short prompt in a large prefill chunk costs what its own tokens cost. prologue (one token; x
    None): the product's input is formed from the residual stream in its own dispatch (StreamNorm)."""
    rows, cols = w.shape
    stride = rows if out_stride is None else out_stride
    if out_offset + rows > stride:
        raise ValueError(f"matmul: {rows} rows at offset {out_offset} do not fit output rows of {stride}")
    _check(out, (n_tokens - 1) * stride + out_offset + rows, "output")
    if prologue is not None:
        _check_prologue(g.device, prologue, x, n_tokens, cols)
        await _matvec(g, w, None, out, out_offset=out_offset, acc=accumulate, scale=scale, pro=prologue)
        return
    _check(x, n_tokens * cols, "activation")
    if n_tokens == 1 and cols % 8 == 0:
        await _matvec(g, w, x, out, out_offset=out_offset, acc=accumulate, scale=scale)
        return
    await _matmul_tiled(g, w, x, out, n_tokens=n_tokens, out_offset=out_offset, out_stride=stride,
                        acc=accumulate, scale=scale, step=step)


async def matmul_geglu(g: Graph, w: Tensor, x: Tensor | None, out: Tensor, *, n_tokens: int,
                       scratch: Tensor | None = None, step: Tensor | None = None,
                       prologue: StreamNorm | None = None) -> None:
    """out[t, i] = gelu_tanh(W[i] . x[t]) * (W[F + i] . x[t]), i < F: the GeGLU input of Gemma's MLP from one
    weight w [2F, cols] holding the gate rows then the up rows (see Gemma's upload).

    One token: one matrix-vector dispatch whose row groups take gate row i and up row i together (shared
    activation loads, the activation function as its epilogue) when w is one buffer part. Otherwise the
    product goes to scratch (f32 [n_tokens, 2F]) and gelu_mul reads it: two dispatches. step as in matmul.
    prologue (one token; x None): the input formed from the residual stream (StreamNorm) by the product."""
    from .nn import gelu_mul

    rows, cols = w.shape
    if rows % 2:
        raise ValueError(f"matmul_geglu: weight {w.label!r} has an odd number of rows ({rows})")
    _check(out, n_tokens * rows // 2, "output")
    if prologue is not None and len(w.parts) == 1:
        _check_prologue(g.device, prologue, x, n_tokens, cols)
        await _matvec(g, w, None, out, epi=1, pro=prologue)
        return
    if prologue is None:
        _check(x, n_tokens * cols, "activation")
    if n_tokens == 1 and cols % 8 == 0 and len(w.parts) == 1:
        await _matvec(g, w, x, out, epi=1)
        return
    if scratch is None:
        raise ValueError("matmul_geglu: more than one token (or a weight in parts) needs a scratch buffer")
    await matmul(g, w, x, scratch, n_tokens=n_tokens, step=step, prologue=prologue)
    await gelu_mul(g, scratch, None, out, n=rows // 2, fused=True)


async def matvec_gelu_gate(g: Graph, w: Tensor, x: Tensor | None, gate: Tensor, out: Tensor, *, gate_offset: int,
                           prologue: StreamNorm | None = None) -> None:
    """out[r] = gelu_tanh(W[r] . x) * gate[gate_offset + r] for one token, in one matrix-vector dispatch (the
    gate as its epilogue). x: f32 [cols]; gate: f32, read at gate_offset..; out: f32 [rows]. prologue (x
    None): x formed from the residual stream (StreamNorm, without a scale: the gate holds binding 3)."""
    rows, cols = w.shape
    if cols % 8:
        raise ValueError(f"matvec_gelu_gate: rows of {cols} columns are not whole units of 8")
    if prologue is not None:
        _check_prologue(g.device, prologue, x, 1, cols)
        if prologue.scale is not None:
            raise ValueError("matvec_gelu_gate: a prologue with a scale (the gate epilogue holds its binding)")
    else:
        _check(x, cols, "activation")
    _check(gate, gate_offset + rows, "gate")
    _check(out, rows, "output")
    await _matvec(g, w, x, out, epi=2, p=gate, p_offset=gate_offset, pro=prologue)


def _check_prologue(device, pro: StreamNorm, x, n_tokens: int, cols: int) -> None:
    if x is not None or n_tokens != 1:
        raise ValueError("a StreamNorm prologue forms the input of one token: pass x=None and n_tokens=1")
    if not stream_norm_fits(device, cols):
        raise ValueError(f"a StreamNorm prologue over rows of {cols} values does not fit this device's "
                         "workgroup memory (or rows are not whole units of 8); norm the stream first")
    if pro.stream_out.buffer is pro.stream.buffer:
        raise ValueError("StreamNorm: stream_out must be another buffer than stream (the stream in two buffers)")
    for t, what in ((pro.stream, "stream"), (pro.delta, "delta"), (pro.delta_norm, "delta_norm"),
                    (pro.stream_out, "stream_out")) + (((pro.input_norm, "input_norm"),) if pro.input_norm else ()):
        _check(t, cols, f"StreamNorm {what}")


async def _matvec(g: Graph, w: Tensor, x: Tensor | None, out: Tensor, *, out_offset: int = 0, acc: bool = False,
                  scale: float = 1.0, epi: int = 0, p: Tensor | None = None, p_offset: int = 0,
                  pro: StreamNorm | None = None) -> None:
    """The matrix-vector kernel over every part of w (epilogues: matvec_lib.wgsl; with `pro`, its input formed
    by matvec_stream_norm.wgsl's prologue, else read from x by matvec_x.wgsl)."""
    rows, cols = w.shape
    qt = qtype(w)
    rb = row_bytes(qt, cols)
    # The shape depends on the whole weight, not on the part: every part's dispatch runs the same one (so the
    # parts' prologues sum in the same order and write the same stream).
    if pro is None:
        libs, extra = _libs(qt) + ("matvec_x", "matvec_units", "matvec_lib"), {}
        wg, r, lpr = _matvec_shape(cols, rows, qt)
    else:
        libs = _libs(qt) + ("workgroup_sum", "matvec_stream_norm", "matvec_units", "matvec_lib")
        wg, r, lpr = _prologue_shape(cols, epi)
        extra = dict(PV=-(-cols // (4 * wg)), EPS=float(pro.eps), HAS_SCALE=pro.scale is not None,
                     NORM_X=pro.input_norm is not None)
    if epi == 1:  # one gate row and its up row per row group
        r = 2
    elif epi == 2:
        r = 1
    # R: the kernel's vec4 of rows; powers of two: tree and butterfly reductions.
    assert r in (1, 2, 4) and wg & (wg - 1) == 0 and lpr & (lpr - 1) == 0 and 4 <= lpr <= wg, (wg, r, lpr)
    for buf, first, n in w.parts:
        stored = (n // 2, 1) if epi == 1 else (n, r)  # (rows stored, rows stored per row group)
        grid = _grid(-(-stored[0] // (stored[1] * wg // lpr)))
        k = await g.device.kernel("matvec", libs=libs, ROWS=n, ROW0=first + out_offset, COLS=cols, ROW_BYTES=rb,
                                  R=r, WG=wg, LPR=lpr, GRID_X=grid[0], ACC=acc, SCALE=float(scale), EPI=epi,
                                  P_OFF=p_offset, **extra)
        if pro is None:
            g.add(k, [buf, x, out, p if p is not None else x], grid)
            continue
        # binding 3 holds the gate (EPI 2) or the stream's scale; unused bindings take a read-only input
        p3 = p if p is not None else pro.scale if pro.scale is not None else pro.delta_norm
        g.add(k, [buf, None, out, p3, pro.stream, pro.delta, pro.delta_norm,
                  pro.input_norm if pro.input_norm is not None else pro.delta_norm, pro.stream_out], grid)


async def _matmul_tiled(g: Graph, w: Tensor, x: Tensor, out: Tensor, *, n_tokens: int, out_offset: int,
                        out_stride: int, acc: bool, scale: float, step: Tensor | None = None) -> None:
    rows, cols = w.shape
    qt = qtype(w)
    rb = row_bytes(qt, cols)
    for buf, first, n in w.parts:
        rpt, tpt, tk = _matmul_block(g.device, n, n_tokens)
        grid = (-(-n // (16 * rpt)), -(-n_tokens // (16 * tpt)))
        splits = 1 if step is None else _k_splits(g.device, n, n_tokens, cols, rpt, tpt, tk)
        kc = -(-(-(-cols // tk)) // splits) * tk  # columns per split, whole k-steps
        splits = -(-cols // kc)
        if splits == 1:
            k = await g.device.kernel("matmul", libs=_libs(qt), entry="main" if step is None else "run", ROWS=n,
                                      ROW0=first + out_offset, COLS=cols, ROW_BYTES=rb, N_TOK=n_tokens,
                                      OUT_STRIDE=out_stride, ACC=acc, SCALE=float(scale), RPT=rpt, TPT=tpt, TK=tk,
                                      KSPLIT=1, KC=kc, SPLIT_STRIDE=0)
            g.add(k, [buf, x, out] if step is None else [buf, x, out, step], grid)
            continue
        # Each split's partial sums go to the scratch, then matmul_reduce adds them into out.
        scratch = _scratch(g.device)
        k = await g.device.kernel("matmul", libs=_libs(qt), entry="run", ROWS=n, ROW0=0, COLS=cols, ROW_BYTES=rb,
                                  N_TOK=n_tokens, OUT_STRIDE=n, ACC=False, SCALE=1.0, RPT=rpt, TPT=tpt, TK=tk,
                                  KSPLIT=splits, KC=kc, SPLIT_STRIDE=n_tokens * n)
        g.add(k, [buf, x, scratch, step], (*grid, splits))
        red = _grid(-(-(n * n_tokens) // 256))
        r = await g.device.kernel("matmul_reduce", KSPLIT=splits, ROWS=n, ROW0=first + out_offset, N_TOK=n_tokens,
                                  OUT_STRIDE=out_stride, ACC=acc, SCALE=float(scale), WG=256, GRID_X=red[0])
        g.add(r, [scratch, out, step], red)


async def embed(g: Graph, table: Tensor, ids: Tensor, out: Tensor, *, n_tokens: int, scale: float = 1.0,
                accumulate: bool = False) -> None:
    """out[t, :] = scale * table[ids[t], :] for t < n_tokens (Gemma: scale = sqrt(d_model)); accumulate=True
    adds instead: out[t, :] += scale * table[ids[t], :] (the vision tower's 2-D position table, F32 [2, P, d]
    seen as (2P, d): one call with ids px, one with ids P + py).

    table: (vocab, cols), any of QUANT_TYPES, possibly split in parts; ids: u32 [n_tokens]; out: f32
    [n_tokens, cols]. Each part's dispatch writes the tokens whose id lies in its rows; an id outside the
    table leaves its output row untouched."""
    rows, cols = table.shape
    qt = qtype(table)
    rb = row_bytes(qt, cols)
    _check(ids, n_tokens, "ids")
    _check(out, n_tokens * cols, "output")
    wg = 64 if cols <= 1024 else 128  # 4 columns a lane: 1536 columns are 3 passes of 128 lanes
    grid = _grid(n_tokens)
    for buf, first, n in table.parts:
        k = await g.device.kernel("embed", libs=_libs(qt), ROWS=n, ROW0=first, COLS=cols, ROW_BYTES=rb,
                                  N_TOK=n_tokens, WG=wg, GRID_X=grid[0], SCALE=float(scale), ACC=bool(accumulate))
        g.add(k, [buf, ids, out], grid)
