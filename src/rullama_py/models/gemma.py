"""Gemma 3 and Gemma 4 (E2B/E4B) text decoders on the GPU: weights straight from GGUF, the forward pass as
plain op calls.

The forward pass of one run of up to `capacity` tokens is recorded once into a gpu.Graph (see `_record`), so
running it again - every decoded token, every prefill chunk - costs one small uniform write and one submit.
Two runs are recorded: `decode` (capacity 1: matrix-vector kernels) and `prefill` (capacity `prefill_chunk`:
matrix-matrix kernels), and on a hardware GPU a third, `prefill_long` (capacity `long_prefill_chunk`), for the
chunks of long prompts (see LONG_PREFILL_CHUNK). They share the weights, the KV cache and the Step uniform
(shaders/common.wgsl).

The Gemma 4 specifics, all driven by the GGUF metadata through config.ModelConfig:
- per-layer embeddings (PLE): one row of the BF16 `per_layer_token_embd` table per token, read from the file
  on the host (the table is 4.7 GB on E2B), mixed with a projection of the embedding, and gated into the
  residual stream after every layer. `ple_on_gpu=True` uploads the table instead, for a GPU with the memory
  to spare: the graphs then gather the rows themselves, so a decode step needs nothing from the host and
  the engine can submit the next step before reading this one's token (Engine.decode_ahead);
- KV sharing: the last `shared_kv_layers` layers attend over the cache of an earlier layer (`kv_donor`);
- the value norm (RMSNorm without weight), `layer_output_scale`, proportional RoPE (`rope_freqs`), and the
  final logit soft-cap.
- mixture of experts (26B-A4B): beside the dense MLP, a router picks `n_experts_used` of `n_experts` experts per
  token on the GPU (ops/moe.py), and the experts' kernels read the chosen experts' rows through the indices the
  router wrote; global layers may lack attn_v (the value is the key projection, value-normed).
Norm weights are used as stored (x * w): llama.cpp's converters fold Gemma 3's (1 + w) into the file.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .. import ops
from ..config import ModelConfig
from ..gguf_file import GGUFFile
from ..gpu import UNIFORM, Device, GPUError, Graph, Tensor


class ModelLoadError(RuntimeError):
    """The GGUF lacks a tensor the model needs, or a tensor has an unexpected shape."""


@dataclass
class Experts:
    """A mixture-of-experts layer's own weights (Gemma 4 26B-A4B; llama.cpp's tensor names in comments)."""

    router_norm: Tensor  # ffn_gate_inp.scale * d_model^-0.5: the weight of the router's input RMSNorm
    router: Tensor  # ffn_gate_inp [n_experts, d]
    expert_scale: Tensor  # ffn_down_exps.scale [n_experts]: multiplies each chosen expert's routing weight
    gate_up: Tensor | None  # ffn_gate_up_exps [n_experts * 2ff, d]: each expert's gate rows, then its up rows
    gate: Tensor | None  # ffn_gate_exps / ffn_up_exps [n_experts * ff, d], when the file keeps them apart
    up: Tensor | None
    down: Tensor  # ffn_down_exps [n_experts * d, ff]
    pre_norm: Tensor  # pre_ffw_norm_2: the experts' input norm
    post_norm_dense: Tensor  # post_ffw_norm_1: after the dense MLP
    post_norm: Tensor  # post_ffw_norm_2: after the experts


@dataclass
class Layer:
    attn_norm: Tensor
    # The q, k and v projections as (weight, first output column) into one [q | k | v] row per token; weights of
    # one type were uploaded as one (see Gemma._row_groups), so this is usually a single product.
    qkv: list
    qkv_width: int  # columns of that row: q, then k and v where the layer has them
    v_offset: int | None  # column of v (= k's when the value is the key projection); None: no K/V of its own
    wo: Tensor
    q_norm: Tensor
    k_norm: Tensor | None
    post_attn_norm: Tensor
    ffn_norm: Tensor
    gate_up: Tensor | None  # [gate; up] uploaded as one (ops.matmul_geglu), or None: w_gate and w_up apart
    w_gate: Tensor | None
    w_up: Tensor | None
    w_down: Tensor
    post_ffw_norm: Tensor
    # Gemma 4 only
    inp_gate: Tensor | None = None
    proj: Tensor | None = None
    post_norm: Tensor | None = None
    out_scale: Tensor | None = None
    moe: Experts | None = None  # 26B-A4B


@dataclass
class Run:
    """Activation buffers and the recorded graph of one run shape (decode or a prefill chunk)."""

    capacity: int
    ids: Tensor
    graph: Graph
    ple: Tensor | None = None  # [capacity, n_layers * ple_dim], the identity part (Gemma 4; see write_inputs)
    bufs: dict = field(default_factory=dict)


STEP_BYTES = 32
# Tokens per prefill run: the tiled products' occupancy grows with the chunk (a 2048-row weight is 32 tiles of
# 64 rows, times the chunk's token tiles, for a GPU of a hundred multiprocessors), and the products compute only
# a run's own tokens (ops.matmul step=). A GPU emulated on the CPU keeps 64: its pipelines compile slowly and it
# gains nothing from occupancy.
PREFILL_CHUNK, SOFTWARE_PREFILL_CHUNK = 256, 64
# A hardware GPU also gets a run of LONG_PREFILL_CHUNK tokens for long prompts: each pass reads the weights once
# for twice the tokens (E2B's 512-token prompt: +16% on an H200, docs/PERFORMANCE.md). It is a run of its own,
# not the only one, because a run's products are tiled and split for its capacity: a short prompt (a chat turn)
# in a 512-token run would get the 128 x 128 tiles and the few column splits planned for 512 tokens.
LONG_PREFILL_CHUNK = 512


def default_prefill_chunk(device: Device) -> int:
    return SOFTWARE_PREFILL_CHUNK if device.software else PREFILL_CHUNK


def default_long_prefill_chunk(device: Device, cfg: ModelConfig) -> int:
    """The long prefill run's capacity on this device (0: none): LONG_PREFILL_CHUNK on a hardware GPU whose
    binding limit holds that many tokens' widest activation."""
    if device.software:
        return 0
    widest = LONG_PREFILL_CHUNK * max(2 * max(cfg.ffn_dim), cfg.n_layers * (cfg.ple_dim or 0)) * 4
    return LONG_PREFILL_CHUNK if widest <= device.limits["max-storage-buffer-binding-size"] else 0

# The decode run's stream norms in the prologues of the products that read them (ops.StreamNorm; see
# Gemma._layers). False: a norm dispatch each, as in the prefill runs (tools set it to compare).
FUSE_STREAM_NORMS = True


@dataclass
class _Stream:
    """Where a run's residual stream is while its graph is recorded: h, and the spare buffer it moves to when a
    product's prologue adds to it (None: it stays in h, added to in place)."""

    h: Tensor
    spare: Tensor | None


SOFT_TOKEN = 0xFFFFFFFF  # the id of a row whose embedding is a soft token (see Gemma.write_inputs)
PLE_CACHE_BYTES = 32 << 20  # per-layer-embedding rows kept on the host (see Gemma.ple_rows)


class Gemma:
    """A loaded Gemma text decoder. Create with `await Gemma.load(gguf_file, device, ...)`."""

    def __init__(self, cfg: ModelConfig, device: Device, gf: GGUFFile, max_context: int, prefill_chunk: int,
                 long_prefill_chunk: int = 0, kv_cache_type: str = "f16"):
        self.cfg = cfg
        self.device = device
        self.gguf = gf
        self.max_context = max_context
        self.prefill_chunk = prefill_chunk
        self.long_prefill_chunk = long_prefill_chunk  # 0: no long prefill run
        self.prefill_long: Run | None = None
        self.layers: list[Layer] = []
        self.step = device.tensor((STEP_BYTES // 4,), "uint32", "step", usage=UNIFORM)
        self._step_bytes = bytearray(STEP_BYTES)
        self.kv: dict[int, tuple] = {}  # layer -> (K cache, V cache, slots)
        self.kv_cache_type = kv_cache_type  # ops.KV_CACHE_TYPES
        self.logits = device.tensor((1, cfg.vocab_size), "float32", "logits")
        self.head_norm = device.tensor((1, cfg.d_model), "float32", "head_norm")
        # Gemma 4's per-layer-embedding rows, scaled and ready to upload, most recently used last. The table
        # (4.7 GB for E2B) stays in the file and a row is read per token; in the browser that read is an OPFS
        # or HTTP round trip, and chat text reuses a small set of tokens, so recent rows are kept.
        self._ple_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._ple_cache_rows = max(64, PLE_CACHE_BYTES // max(1, 4 * cfg.n_layers * (cfg.ple_dim or 1)))
        self.ple_table: Tensor | None = None  # the whole table on the GPU (ple_on_gpu), else None

    @property
    def host_ple_rows(self) -> bool:
        """Whether every run needs its tokens' per-layer-embedding rows read on the host (Gemma 4 E2B/E4B with
        the table left in the file): then a decode step cannot be submitted before the last token is known."""
        return bool(self.cfg.ple_dim) and self.ple_table is None

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    async def load(cls, gf: GGUFFile, device: Device, *, max_context: int = 4096, prefill_chunk: int | None = None,
                   long_prefill_chunk: int | None = None, ple_on_gpu: bool = False, kv_cache_type: str = "f16",
                   progress=None) -> "Gemma":
        """Upload the weights of `gf` and record the decode and prefill graphs. `progress(done_bytes,
        total_bytes, name)` is called after each tensor. `ple_on_gpu`: upload Gemma 4's per-layer-embedding
        table too (see the module doc; models without one ignore it). `long_prefill_chunk`: the capacity of a
        second prefill run for prompts longer than a prefill chunk (0: none); by default the device's
        (default_long_prefill_chunk) when prefill_chunk is the device's too, else none. `kv_cache_type`: "f16",
        or "q8_0" for about half the KV cache's memory (ops.kv_cache), checked before any upload."""
        cfg = ModelConfig.from_metadata(gf.metadata)
        for hd in sorted(set(cfg.head_dim)):
            ops.check_kv_cache_type(kv_cache_type, hd)
        max_context = max(1, min(max_context, cfg.context_length))
        chunk = min(prefill_chunk or default_prefill_chunk(device), max_context)
        if long_prefill_chunk is None:
            long_prefill_chunk = default_long_prefill_chunk(device, cfg) if prefill_chunk is None else 0
        long_chunk = min(long_prefill_chunk, max_context)
        m = cls(cfg, device, gf, max_context, chunk, long_chunk if long_chunk > chunk > 1 else 0, kv_cache_type)
        await m._upload(progress, with_ple_table=bool(ple_on_gpu and cfg.ple_dim))
        m._alloc_kv()
        if m.prefill_chunk > 1:
            # Recorded side by side: in the browser, pipelines compile asynchronously on the GPU process's
            # threads, so the two graphs' kernels (matrix-vector vs matrix-matrix) compile at the same time.
            runs = [m._record(1), m._record(m.prefill_chunk)]
            if m.long_prefill_chunk:
                runs.append(m._record(m.long_prefill_chunk))
            m.decode, m.prefill, *long = await asyncio.gather(*runs)
            m.prefill_long = long[0] if long else None
        else:
            m.decode = m.prefill = await m._record(1)
        return m

    def _weight_names(self) -> list[str]:
        skip = {"per_layer_token_embd.weight"}  # stays in the file: read a row per token (see class doc)
        return [n for n in self.gguf.tensors if n in self._wanted() and n not in skip]

    def _wanted(self) -> set:
        c = self.cfg
        names = {"token_embd.weight", "output_norm.weight"}
        if c.ple_dim:
            names |= {"per_layer_model_proj.weight", "per_layer_proj_norm.weight"}
        if "rope_freqs.weight" in self.gguf:
            names.add("rope_freqs.weight")
        for l in range(c.n_layers):
            p = f"blk.{l}."
            names |= {p + s + ".weight" for s in ("attn_norm", "attn_q", "attn_output", "attn_q_norm",
                                                  "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up",
                                                  "ffn_down", "post_ffw_norm")}
            if c.has_kv[l]:
                names |= {p + "attn_k.weight", p + "attn_k_norm.weight"}
                # Gemma 4's global layers may have no value projection: the value is the key projection
                if not c.is_gemma4 or p + "attn_v.weight" in self.gguf:
                    names.add(p + "attn_v.weight")
            if c.ple_dim:
                names |= {p + "inp_gate.weight", p + "proj.weight", p + "post_norm.weight"}
            if c.is_moe:
                names |= {p + "ffn_gate_inp.weight", p + "ffn_gate_inp.scale", p + "ffn_down_exps.weight",
                          p + "ffn_down_exps.scale", p + "pre_ffw_norm_2.weight", p + "post_ffw_norm_1.weight",
                          p + "post_ffw_norm_2.weight"}
                if p + "ffn_gate_up_exps.weight" in self.gguf:
                    names.add(p + "ffn_gate_up_exps.weight")
                else:
                    names |= {p + "ffn_gate_exps.weight", p + "ffn_up_exps.weight"}
            names |= {p + n for n in self._layer_scalars() if p + n in self.gguf}
        return names

    def _layer_scalars(self) -> tuple:
        """The per-layer output scalars this model reads (DiffusionGemma adds its encoder's)."""
        return ("layer_output_scale.weight",)

    def _expert_rows(self, name: str) -> int:
        """Rows of one expert of a 3-D expert tensor (0 for other tensors): uploads keep experts whole per
        buffer part."""
        info = self.gguf.info(name)
        return info.n_rows // info.shape[0] if len(info.shape) == 3 else 0

    def _row_groups(self, names: list) -> dict:
        """Weights uploaded as one buffer, rows concatenated, keyed by their first member: a layer's q, k and v
        projections (each run of consecutive ones of one type), and its gate and up projections. One
        matrix-vector dispatch then reads a whole group: the products write column ranges of one row
        (ops.matmul's out_offset), and the gate and up rows meet in ops.matmul_geglu's epilogue."""
        gf, have = self.gguf, set(names)
        groups = {}
        for l in range(self.cfg.n_layers):
            p = f"blk.{l}."
            for members in (("attn_q", "attn_k", "attn_v"), ("ffn_gate", "ffn_up")):
                present = [p + m + ".weight" for m in members if p + m + ".weight" in have]
                run = present[:1]
                for n in present[1:] + [None]:
                    same = n is not None and (gf.info(n).type_name, gf.info(n).shape[-1]) == \
                        (gf.info(run[0]).type_name, gf.info(run[0]).shape[-1])
                    if same and (members[0] != "ffn_gate" or len(present) == 2):
                        run.append(n)
                        continue
                    if len(run) > 1:
                        groups[run[0]] = run
                    run = [n]
        return groups

    async def _upload(self, progress, with_ple_table: bool = False) -> None:
        """Every weight the graphs read, and with_ple_table the per-layer-embedding table last (its progress
        counted in the same total)."""
        gf, dev = self.gguf, self.device
        missing = sorted(n for n in self._wanted() if n not in gf)
        if missing:
            raise ModelLoadError(f"{gf.source.name}: the GGUF lacks tensors {', '.join(missing[:6])}"
                                 + (" ..." if len(missing) > 6 else ""))
        names = self._weight_names()
        total = sum(gf.info(n).nbytes for n in names)
        if with_ple_table:
            total += gf.info("per_layer_token_embd.weight").nbytes
        groups = self._row_groups(names)
        grouped = {n for members in groups.values() for n in members[1:]}
        done = 0
        w = {}
        c = self.cfg
        for name in names:
            if name in grouped:
                continue  # uploaded with its group's first member
            info = gf.info(name)
            members = groups.get(name, [name])
            raw = await gf.tensor_bytes(name) if len(members) == 1 else \
                b"".join([await gf.tensor_bytes(m) for m in members])
            if info.type_name == "f32" and len(info.shape) == 1:
                values = np.frombuffer(raw, np.float32)
                if name.endswith("ffn_gate_inp.scale"):
                    # The router's input is rms_norm(r) * scale * d^-0.5: one RMSNorm with this weight.
                    values = (values.astype(np.float64) / math.sqrt(c.d_model)).astype(np.float32)
                w[name] = dev.upload(values, label=name)
            else:
                n_rows = sum(gf.info(m).n_rows for m in members)
                label = "+".join([members[0]] + [m.rsplit(".", 2)[-2] for m in members[1:]])
                expert = self._expert_rows(name)
                w[label if len(members) > 1 else name] = dev.upload_rows(
                    raw, n_rows, info.row_bytes, (n_rows, info.shape[-1]), info.type_name, label,
                    **({"align_rows": expert} if expert else {}))
            del raw
            for m in members:
                done += gf.info(m).nbytes
                if progress is not None:
                    progress(done, total, m)
        self.w = w
        for l in range(c.n_layers):
            p = f"blk.{l}."
            g = w.get
            moe = None
            if c.is_moe:
                moe = Experts(router_norm=w[p + "ffn_gate_inp.scale"], router=w[p + "ffn_gate_inp.weight"],
                              expert_scale=w[p + "ffn_down_exps.scale"], gate_up=g(p + "ffn_gate_up_exps.weight"),
                              gate=g(p + "ffn_gate_exps.weight"), up=g(p + "ffn_up_exps.weight"),
                              down=w[p + "ffn_down_exps.weight"], pre_norm=w[p + "pre_ffw_norm_2.weight"],
                              post_norm_dense=w[p + "post_ffw_norm_1.weight"], post_norm=w[p + "post_ffw_norm_2.weight"])
            nh, nkv, hd = c.n_heads[l], c.n_kv_heads[l], c.head_dim[l]
            cols = {p + "attn_q.weight": 0, p + "attn_k.weight": nh * hd, p + "attn_v.weight": (nh + nkv) * hd}
            qkv = [(t, cols[label.split("+")[0]]) for label, t in w.items() if label.split("+")[0] in cols]
            v_offset = None
            if c.has_kv[l]:
                v_offset = cols[p + "attn_v.weight"] if p + "attn_v.weight" in gf else cols[p + "attn_k.weight"]
            gate_up = g(p + "ffn_gate.weight+ffn_up")
            self.layers.append(Layer(
                attn_norm=w[p + "attn_norm.weight"], qkv=sorted(qkv, key=lambda e: e[1]),
                qkv_width=max(off + t.shape[0] for t, off in qkv), v_offset=v_offset,
                wo=w[p + "attn_output.weight"], q_norm=w[p + "attn_q_norm.weight"],
                k_norm=g(p + "attn_k_norm.weight"), post_attn_norm=w[p + "post_attention_norm.weight"],
                ffn_norm=w[p + "ffn_norm.weight"], gate_up=gate_up, w_gate=g(p + "ffn_gate.weight"),
                w_up=g(p + "ffn_up.weight"), w_down=w[p + "ffn_down.weight"],
                post_ffw_norm=w[p + "post_ffw_norm.weight"],
                inp_gate=g(p + "inp_gate.weight"), proj=g(p + "proj.weight"), post_norm=g(p + "post_norm.weight"),
                out_scale=g(p + "layer_output_scale.weight"), moe=moe,
            ))
        if c.ple_dim:
            # The PLE identity term is E_ple[t] * sqrt(ple_dim), and the sum with the projected term is scaled
            # by 1/sqrt(2) (gemma4.md 1.2). Fold 1/sqrt(2) into the projection norm's weight, so the graph
            # computes p = rms_norm(proj) * (w / sqrt 2) + identity, with the identity part (E_ple[t] *
            # sqrt(ple_dim) / sqrt 2) in the buffer the norm accumulates into: written by the host, or
            # gathered by the graph when the table is on the GPU.
            norm = await gf.tensor("per_layer_proj_norm.weight")
            w["per_layer_proj_norm.weight"] = dev.upload((norm / math.sqrt(2.0)).astype(np.float32),
                                                         label="per_layer_proj_norm/sqrt2")
            self._ple_info = gf.info("per_layer_token_embd.weight")
            if self._ple_info.type_name not in ("bf16", "f16", "f32"):
                raise ModelLoadError(f"per_layer_token_embd is {self._ple_info.type_name}; expected bf16, f16 or f32")
            if with_ple_table:
                await self._upload_ple_table(progress, done, total)

    async def _upload_ple_table(self, progress, done: int, total: int) -> None:
        """The per-layer-embedding table as it is in the file (BF16 on E2B: 4.7 GB), in parts under the binding
        limit; the graphs gather and scale its rows (ops.embed). Read and written a piece at a time, so host
        memory holds one piece (Device.upload_rows_from), never the table."""
        info = self._ple_info

        async def read(first: int, n: int):
            return await self.gguf.tensor_bytes(info.name, slice(first, first + n))

        def report(table_done: int, table_total: int) -> None:
            if progress is not None:  # counted after the other weights, in their total
                progress(done + table_done, total, info.name)

        try:
            self.ple_table = await self.device.upload_rows_from(read, info.n_rows, info.row_bytes,
                                                                (info.n_rows, info.shape[-1]), info.type_name,
                                                                info.name, progress=report)
        except GPUError as e:
            raise ModelLoadError(f"the per-layer-embedding table ({info.nbytes / 1e9:.1f} GB) does not fit on this "
                                 f"GPU ({e}); load the model without ple_on_gpu (--ple-on-gpu) to read its rows "
                                 "from the file instead") from e

    def _alloc_kv(self) -> None:
        c = self.cfg
        for l in range(c.n_layers):
            if not c.has_kv[l]:
                continue
            window = c.sliding_window if c.is_sliding[l] else 0
            slots = ops.kv_slots(self.max_context, window=window,
                                 max_tokens=max(self.prefill_chunk, self.long_prefill_chunk))
            k, v = ops.kv_cache(self.device, n_kv_heads=c.n_kv_heads[l], head_dim=c.head_dim[l], slots=slots,
                                label=f"kv{l}", cache_type=self.kv_cache_type)
            self.kv[l] = (k, v, slots)

    @property
    def kv_cache_bytes(self) -> int:
        """GPU bytes of every layer's K and V caches (in self.kv_cache_type's format)."""
        return sum(t.nbytes for k, v, _ in self.kv.values() for t in (k, v))

    def can_rewind(self, n_now: int, n_target: int) -> bool:
        """Whether the cache of a context of n_now tokens can be cut back to its first n_target tokens: a
        sliding-window layer's ring buffer must still hold the window that position n_target looks at."""
        for l, (_, _, slots) in self.kv.items():
            if self.cfg.is_sliding[l] and slots < self.max_context:
                if n_now - n_target > slots - self.cfg.sliding_window:
                    return False
        return True

    # -- the forward pass ----------------------------------------------------------------------------------
    def _buffers(self, cap: int) -> dict:
        """The activation buffers of a run of up to `cap` tokens."""
        c, dev = self.cfg, self.device
        T = lambda *shape, name: dev.tensor(shape, "float32", f"{name}[{cap}]")  # noqa: E731
        d = c.d_model
        max_q = max(h * hd for h, hd in zip(c.n_heads, c.head_dim))
        max_ffn = max(c.ffn_dim)
        b = {}
        b["h"], b["x"], b["o"] = T(cap, d, name="h"), T(cap, d, name="x"), T(cap, d, name="o")
        if self._fuse_stream_norms(cap, True):
            b["h2"] = T(cap, d, name="h2")  # the stream's second buffer (see _layers)
        max_qkv = max(L.qkv_width for L in self.layers)
        b["qkv"], b["q"], b["attn"] = T(cap, max_qkv, name="qkv"), T(cap, max_q, name="q"), T(cap, max_q, name="attn")
        # gate_up: [gate | up] rows, the fused product's output when the GeGLU is not its epilogue
        b["gate_up"], b["act"] = T(cap, 2 * max_ffn, name="gate_up"), T(cap, max_ffn, name="act")
        if any(L.gate_up is None for L in self.layers):  # files whose gate and up differ in type
            b["gate"], b["up"] = T(cap, max_ffn, name="gate"), T(cap, max_ffn, name="up")
        if c.is_moe:
            E, K, ff = c.n_experts, c.n_experts_used, c.expert_ffn_dim
            b["mix"] = T(cap, d, name="mix")  # the dense MLP's and the experts' normed outputs, summed
            b["router_logits"] = T(cap, E, name="router_logits")
            b["expert_ids"] = dev.tensor((cap, K), "uint32", f"expert_ids[{cap}]")
            b["expert_weights"] = T(cap, K, name="expert_weights")
            b["expert_gate_up"] = T(cap, K, 2 * ff, name="expert_gate_up")
            b["expert_act"] = T(cap, K, ff, name="expert_act")
            if cap > 1:  # many tokens: the expert kernels run tiled over each expert's tokens (ops/moe.py)
                b["expert_groups"] = dev.tensor((ops.moe_groups_size(cap, E),), "uint32", f"expert_groups[{cap}]")
                b["expert_partial"] = T(cap, K, d, name="expert_partial")
            if any(L.moe is not None and L.moe.gate_up is None for L in self.layers):
                b["expert_up"] = T(cap, K, ff, name="expert_up")  # files with separate gate and up experts
        return b

    async def _record(self, cap: int) -> Run:
        """Record the forward pass of a run of up to `cap` tokens, ending with the last token's logits."""
        c, dev = self.cfg, self.device
        d = c.d_model
        run = Run(cap, dev.tensor((cap,), "uint32", f"ids[{cap}]"), dev.graph(), bufs=self._buffers(cap))
        b, g, h = run.bufs, run.graph, run.bufs["h"]
        eps = c.norm_eps

        await ops.embed(g, self.w["token_embd.weight"], run.ids, h, n_tokens=cap, scale=c.embed_scale)
        if c.ple_dim:
            T = lambda *shape, name: dev.tensor(shape, "float32", f"{name}[{cap}]")  # noqa: E731
            run.ple = T(cap, c.n_layers * c.ple_dim, name="ple")
            if self.ple_table is not None:  # the identity part, which the projection's norm accumulates onto
                await ops.embed(g, self.ple_table, run.ids, run.ple, n_tokens=cap,
                                scale=math.sqrt(c.ple_dim) / math.sqrt(2.0))
            b["ple_proj"] = T(cap, c.n_layers * c.ple_dim, name="ple_proj")
            b["ple_gate"], b["ple_act"] = T(cap, c.ple_dim, name="ple_gate"), T(cap, c.ple_dim, name="ple_act")
            await ops.matmul(g, self.w["per_layer_model_proj.weight"], h, b["ple_proj"], n_tokens=cap,
                             scale=1.0 / math.sqrt(d), step=self.step)
            await ops.rms_norm(g, b["ple_proj"], self.w["per_layer_proj_norm.weight"], run.ple, n=c.ple_dim,
                               eps=eps, accumulate=True)
        await self._layers(g, b, cap, out_scales=[L.out_scale for L in self.layers], ple=run.ple,
                           final_norm=self.w["output_norm.weight"])
        # head: the last token only; b["x"] holds the output norm of every token
        src = b["x"]
        if cap > 1:
            await ops.select_row(g, src, self.step, self.head_norm, n=d)
            src = self.head_norm
        await ops.matmul(g, self.w["token_embd.weight"], src, self.logits, n_tokens=1)
        if c.final_logit_softcap:
            await ops.softcap(g, self.logits, cap=c.final_logit_softcap)
        return run

    async def _layers(self, g: Graph, b: dict, cap: int, *, out_scales: list, causal: bool = True,
                      ple: Tensor | None = None, final_norm: Tensor | None = None) -> None:
        """Every decoder layer over the run's stream b["h"]; with final_norm, b["x"] ends as rms_norm(h) *
        final_norm (the head's input).

        Each layer leaves its last block's output to be added to the stream (normed, scaled) by whatever reads
        the stream next: the next layer's q/k/v products, or after the last layer one norm dispatch that also
        forms the head's input. In the decode run those products form their input in their prologue
        (ops.StreamNorm), and so do the feed-forward and per-layer-input products: the stream then moves
        between b["h"] and b["h2"], one product's first workgroup writing it while the others read the old."""
        eps, d = self.cfg.norm_eps, self.cfg.d_model
        stream = _Stream(b["h"], b.get("h2") if self._fuse_stream_norms(cap, causal) else None)
        await ops.rms_norm(g, stream.h, self.layers[0].attn_norm, b["x"], n=d, eps=eps)
        pending = None
        for l, L in enumerate(self.layers):
            pending = await self._layer(g, b, cap, l, L, stream, pending, out_scale=out_scales[l], causal=causal,
                                        ple=ple)
        delta, norm, scale = pending
        await ops.rms_norm(g, delta, norm, stream.h, n=d, eps=eps, accumulate=True, scale=scale,
                           then=(final_norm, b["x"]) if final_norm is not None else None)

    def _fuse_stream_norms(self, cap: int, causal: bool) -> bool:
        """Whether a run's stream norms go into the prologues of the products that read them: the decode run
        (one token: matrix-vector products) of a dense model whose width fits the prologue."""
        return (FUSE_STREAM_NORMS and cap == 1 and causal and not self.cfg.is_moe
                and ops.stream_norm_fits(self.device, self.cfg.d_model))

    async def _add_to_stream(self, g: Graph, b: dict, stream: "_Stream", update: tuple, *,
                             input_norm: Tensor | None) -> "ops.StreamNorm | None":
        """Add update = (delta, its post-norm weight, scale or None) to the stream, for readers of
        rms_norm(stream) * input_norm (b["x"]) or, input_norm None, of the stream itself. With the stream in two
        buffers nothing is recorded: the StreamNorm returned is the readers' prologue (each matrix-vector
        product that reads takes it), and the stream moves to the other buffer. Otherwise one norm dispatch
        does it in place (writing b["x"] too) and None is returned."""
        delta, norm, scale = update
        eps = self.cfg.norm_eps
        if stream.spare is not None:
            pro = ops.StreamNorm(stream=stream.h, delta=delta, delta_norm=norm, stream_out=stream.spare,
                                 input_norm=input_norm, scale=scale, eps=eps)
            stream.h, stream.spare = stream.spare, stream.h
            return pro
        await ops.rms_norm(g, delta, norm, stream.h, n=self.cfg.d_model, eps=eps, accumulate=True, scale=scale,
                           then=(input_norm, b["x"]) if input_norm is not None else None)
        return None

    async def _layer(self, g: Graph, b: dict, cap: int, l: int, L: Layer, stream: "_Stream", pending: tuple | None,
                     *, out_scale: Tensor | None, causal: bool = True, ple: Tensor | None = None) -> tuple:
        """One decoder layer over the run's stream. On entry the previous layer's last block output is still
        to be added (pending, as _add_to_stream's update; None for the first layer, whose input norm b["x"]
        already holds); returns this layer's. causal=False: every token of the run sees every key stored so far
        and the run's own (DiffusionGemma's canvas); its K/V still go to the cache slots of its positions,
        past the prompt's."""
        c, step, eps = self.cfg, self.step, self.cfg.norm_eps
        x, o = b["x"], b["o"]
        nh, nkv, hd = c.n_heads[l], c.n_kv_heads[l], c.head_dim[l]
        q, attn = (b[n].view((cap, nh * hd)) for n in ("q", "attn"))
        qkv = b["qkv"].view((cap, L.qkv_width))
        ffn = c.ffn_dim[l]
        rope = dict(n_rot=c.rope_dim[l], freq_scale=c.rope_scale[l], base=c.rope_base[l],
                    freq_factors=None if c.is_sliding[l] else self.w.get("rope_freqs.weight"))
        # attention: the q, k, v projections into one row per token; their norms, RoPE and the cache store
        pro = None
        if pending is not None:
            pro = await self._add_to_stream(g, b, stream, pending, input_norm=L.attn_norm)
        for w, col in L.qkv:
            await ops.matmul(g, w, x if pro is None else None, qkv, n_tokens=cap, out_offset=col,
                             out_stride=L.qkv_width, step=step, prologue=pro)
        kv = None
        if L.v_offset is not None:
            kc, vc, slots = self.kv[l]
            kv = (L.k_norm, kc, vc, dict(n_kv_heads=nkv, k_offset=nh * hd, v_offset=L.v_offset, slots=slots,
                                         v_norm=c.is_gemma4))  # Gemma 4 normalises V too (no weight)
        kc, vc, slots = self.kv[c.kv_donor[l]]
        attend = dict(n_heads=nh, n_kv_heads=nkv, head_dim=hd, scale=c.attn_scale, max_ctx=slots,
                      window=c.sliding_window if c.is_sliding[l] else 0)
        if cap == 1 and causal:  # decode: the inputs inside attention's kernel, one dispatch fewer on the chain
            await ops.attention_decode(g, qkv, L.q_norm, q, kc, vc, attn, step, eps=eps, qkv_stride=L.qkv_width,
                                       kv=kv, **attend, **rope)
        else:
            await ops.attention_inputs(g, qkv, L.q_norm, q, step, n_heads=nh, head_dim=hd, eps=eps,
                                       qkv_stride=L.qkv_width, kv=kv, **rope)
            await ops.attention(g, q, kc, vc, attn, step, causal=causal, **attend)
        await ops.matmul(g, L.wo, attn, o, n_tokens=cap, step=step)
        # feed-forward (GeGLU) over the stream with attention's output added
        act = b["act"].view((cap, ffn))
        pro = await self._add_to_stream(g, b, stream, (o, L.post_attn_norm, None), input_norm=L.ffn_norm)
        xin = x if pro is None else None
        if L.gate_up is not None:
            await ops.matmul_geglu(g, L.gate_up, xin, act, n_tokens=cap,
                                   scratch=b["gate_up"].view((cap, 2 * ffn)), step=step, prologue=pro)
        else:
            gate, up = b["gate"].view((cap, ffn)), b["up"].view((cap, ffn))
            await ops.matmul(g, L.w_gate, xin, gate, n_tokens=cap, step=step, prologue=pro)
            await ops.matmul(g, L.w_up, xin, up, n_tokens=cap, step=step, prologue=pro)
            await ops.gelu_mul(g, gate, up, act, n=ffn)
        await ops.matmul(g, L.w_down, act, o, n_tokens=cap, step=step)
        if L.moe is not None:
            # h += post_ffw_norm(post_ffw_norm_1(dense) + post_ffw_norm_2(experts)), the experts' input and the
            # router's both taken from the stream after attention
            await ops.rms_norm(g, o, L.moe.post_norm_dense, b["mix"], n=c.d_model, eps=eps)
            await self._experts(g, b, cap, L.moe, stream.h)
            await ops.rms_norm(g, o, L.moe.post_norm, b["mix"], n=c.d_model, eps=eps, accumulate=True)
            o = b["mix"]
        if not c.ple_dim:
            return (o, L.post_ffw_norm, out_scale)
        # per-layer embedding (Gemma 4 E2B/E4B): gated by the stream with the feed-forward output added; the
        # layer's output scale then applies to the whole stream with the projection added
        pro = await self._add_to_stream(g, b, stream, (o, L.post_ffw_norm, None), input_norm=None)
        await ops.ple_input(g, L.inp_gate, stream.h if pro is None else None, ple, b["ple_act"], n_tokens=cap,
                            layer=l, n_layers=c.n_layers, dim=c.ple_dim, scratch=b["ple_gate"], step=step,
                            prologue=pro)
        await ops.matmul(g, L.proj, b["ple_act"], o, n_tokens=cap, step=step)
        return (o, L.post_norm, out_scale)

    async def _experts(self, g: Graph, b: dict, cap: int, M: Experts, h: Tensor) -> None:
        """b["o"] = the experts' mixture for the stream h: the router picks n_experts_used experts per
        token and their weights on the GPU; the expert kernels read the picked experts' rows through them."""
        c, eps = self.cfg, self.cfg.norm_eps
        d, E, K, ff = c.d_model, c.n_experts, c.n_experts_used, c.expert_ffn_dim
        x = b["x"]
        ids, weights = b["expert_ids"], b["expert_weights"]
        route = dict(n_tokens=cap, n_experts=E, top_k=K)
        await ops.rms_norm(g, h, M.router_norm, x, n=d, eps=eps)
        await ops.matmul(g, M.router, x, b["router_logits"], n_tokens=cap)
        await ops.moe_route(g, b["router_logits"], M.expert_scale, ids, weights, **route)
        groups = b.get("expert_groups")
        if groups is not None:
            await ops.moe_group(g, ids, groups, **route)
        await ops.rms_norm(g, h, M.pre_norm, x, n=d, eps=eps)
        gate_up, act = b["expert_gate_up"], b["expert_act"]
        if M.gate_up is not None:
            await ops.expert_matmul(g, M.gate_up, x, ids, gate_up, groups=groups, **route)
            await ops.gelu_mul(g, gate_up, None, act, n=ff, fused=True)
        else:
            gate, up = gate_up.view((cap, K, ff)), b["expert_up"]
            await ops.expert_matmul(g, M.gate, x, ids, gate, groups=groups, **route)
            await ops.expert_matmul(g, M.up, x, ids, up, groups=groups, **route)
            await ops.gelu_mul(g, gate, up, act, n=ff)
        await ops.expert_matmul_sum(g, M.down, act, ids, weights, b["o"], groups=groups,
                                    partial=b.get("expert_partial"), **route)

    # -- running -------------------------------------------------------------------------------------------
    def write_step(self, pos: int, n_tokens: int, seed: int = 0, counter: int = 0) -> None:
        """Set the Step uniform (shaders/common.wgsl) for the next run."""
        struct.pack_into("<5I", self._step_bytes, 0, pos, n_tokens, pos + n_tokens, seed & 0xFFFFFFFF,
                         counter & 0xFFFFFFFF)
        self.device.write(self.step.buffer, self._step_bytes)

    async def write_inputs(self, run: Run, ids, pos: int, soft=()) -> None:
        """Write a run's token ids (and, for Gemma 4, their per-layer embedding rows) to the GPU.

        `soft`: soft tokens (image or audio embeddings) that replace the token embeddings of some rows, as
        (row, tensor, first_row, n_rows): rows row.. of this run take rows first_row.. of `tensor` (f32
        [.., d_model], e.g. the vision tower's output). They are copied on the GPU into the run's embedding
        buffer before the graph runs, and those rows' ids become SOFT_TOKEN, which the embed kernel leaves
        alone (it writes only ids inside the table), so they reach the layers unscaled, as in transformers.
        Their per-layer-embedding identity term is the pad token's row (transformers looks up pad_token_id,
        0 in every Gemma 4 file, at multimodal positions)."""
        n = len(ids)
        if not 1 <= n <= run.capacity:
            raise ValueError(f"a run holds 1..{run.capacity} tokens, got {n}")
        if pos + n > self.max_context:
            raise ContextOverflowError(f"{pos + n} tokens exceed the context of {self.max_context}")
        arr = np.asarray(ids, dtype=np.uint32)
        if int(arr.max()) >= self.cfg.vocab_size:
            raise ValueError(f"token id {int(arr.max())} is outside the vocabulary of {self.cfg.vocab_size}")
        ple_ids = arr
        if soft:
            arr, ple_ids = arr.copy(), arr.copy()
            row_bytes = 4 * self.cfg.d_model
            h = run.bufs["h"].buffer
            copies = []
            for row, src, first, count in soft:
                if row < 0 or row + count > n:
                    raise ValueError(f"soft rows {row}..{row + count} fall outside a run of {n} tokens")
                arr[row: row + count] = SOFT_TOKEN
                ple_ids[row: row + count] = 0
                copies.append((src.buffer, first * row_bytes, h, row * row_bytes, count * row_bytes))
            self.device.copy(copies)
        self.device.write(run.ids.buffer, arr)
        if self.host_ple_rows:
            self.device.write(run.ple.buffer, await self.ple_rows(ple_ids))
        elif self.cfg.ple_dim and soft:
            # The graph gathers the rows of the ids it is given, and leaves a soft token's row (an id outside
            # the table) as it is: that row takes the pad token's here.
            pad = await self.ple_rows(np.zeros(1, np.uint32))
            for row, _, _, count in soft:
                self.device.write(run.ple.buffer, np.repeat(pad, count, axis=0), offset=row * pad.nbytes)

    async def ple_rows(self, ids: np.ndarray) -> np.ndarray:
        """E_ple[ids] * sqrt(ple_dim) / sqrt(2), f32 [len(ids), n_layers * ple_dim], read from the file (recent
        rows come from a small cache). The rows the cache misses are read together, one read per run of
        consecutive ids and all of them at once, so a prefill chunk over HTTP waits about one round trip
        rather than one per token."""
        info, cache = self._ple_info, self._ple_cache
        scale = np.float32(math.sqrt(self.cfg.ple_dim) / math.sqrt(2.0))
        ids = [int(t) for t in np.asarray(ids).reshape(-1)]
        runs: list[list[int]] = []  # [first, stop) of consecutive ids not cached
        for t in sorted({t for t in ids if t not in cache}):
            if runs and runs[-1][1] == t:
                runs[-1][1] = t + 1
            else:
                runs.append([t, t + 1])
        raws = await asyncio.gather(*(self.gguf.tensor_bytes(info.name, rows=slice(a, b)) for a, b in runs))
        rows = {t: cache[t] for t in ids if t in cache}
        for (a, b), raw in zip(runs, raws):
            if info.type_name == "bf16":
                block = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                block = np.frombuffer(raw, np.float16 if info.type_name == "f16" else np.float32).astype(np.float32)
            block = block.reshape(b - a, -1) * scale
            rows.update((a + i, block[i]) for i in range(b - a))
        for t in ids:  # the cache sees the call's ids in order: least recently used out first
            cache[t] = rows[t]
            cache.move_to_end(t)
            if len(cache) > self._ple_cache_rows:
                cache.popitem(last=False)
        return np.stack([rows[t] for t in ids]).astype(np.float32, copy=False)

    def run_for(self, remaining: int) -> Run:
        """The run for the next chunk of a prompt with `remaining` tokens to go: the long prefill run while more
        than a prefill chunk remains, the prefill run for the rest, the decode run for a last single token."""
        if self.prefill_long is not None and remaining > self.prefill_chunk:
            return self.prefill_long
        return self.prefill if remaining > 1 else self.decode

    async def forward(self, ids, pos: int, soft=()) -> np.ndarray:
        """Run `ids` at positions pos.. through the model (prefill chunks as needed) and return the last
        token's logits; `soft` as in chunk_soft. For tests and tools: generation uses Engine, which samples on
        the GPU instead."""
        ids = list(ids)
        done = 0
        while done < len(ids):
            run = self.run_for(len(ids) - done)
            chunk = ids[done: done + run.capacity]
            await self.write_inputs(run, chunk, pos, chunk_soft(soft, done, done + len(chunk)))
            self.write_step(pos, len(chunk))
            self.device.submit(run.graph)
            pos += len(chunk)
            done += len(chunk)
        return (await self.device.read(self.logits))[0]


def chunk_soft(soft, start: int, end: int) -> list:
    """The part of `soft` that falls in ids[start:end], as write_inputs rows. `soft` lists blocks of soft
    tokens over a sequence of ids as (offset, tensor, n): ids[offset:offset + n] take rows 0..n-1 of tensor."""
    rows = []
    for off, t, n in soft:
        lo, hi = max(off, start), min(off + n, end)
        if lo < hi:
            rows.append((lo - start, t, lo - off, hi - lo))
    return rows


class ContextOverflowError(ValueError):
    """More tokens than the context the model was loaded with."""
