"""Model hyper-parameters from GGUF metadata, with every per-layer quantity spelled out.

    cfg = ModelConfig.from_metadata(gf.metadata)
    cfg.is_sliding[l], cfg.head_dim[l], cfg.n_kv_heads[l], cfg.ffn_dim[l], cfg.rope_base[l], cfg.kv_donor[l]

Supported architectures: `gemma3`, `gemma4` (dense E2B/E4B and the 26B-A4B mixture of experts) and
`diffusion-gemma` (DiffusionGemma: Gemma 4 26B-A4B layers run as an encoder and a denoising decoder; its
`diffusion.*` keys become `cfg.diffusion`). The derived rules follow llama.cpp, which is what produced
(or runs) the GGUF files we open:

- gemma3: layer i is sliding iff (i + 1) % 6 != 0 (`set_swa_pattern(6)`), unless the file has a
  sliding_window_pattern key; no sliding at all when sliding_window is absent or 0. Local RoPE base 1e4
  (freq_base_swa if present), global RoPE base freq_base. Attention scale head_dim**-0.5, except that the
  27B (62 layers) uses (d_model // n_heads)**-0.5, Gemma's query_pre_attn_scalar; an explicit
  `<arch>.attention.query_pre_attn_scalar` key wins over both.
- gemma4: per-layer sliding pattern from sliding_window_pattern (bool array), sliding layers use the *_swa
  head and RoPE sizes, attention scale 1.0, and the last shared_kv_layers layers reuse the KV cache of a
  donor: n_kv - 2 for sliding layers and n_kv - 1 for global ones (n_kv = layers with their own KV).

A scalar sliding_window_pattern n means "every n-th layer global" (llama.cpp's set_swa_pattern(n)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from gguf import Keys

SUPPORTED_ARCHITECTURES = ("gemma3", "gemma4", "diffusion-gemma")
GEMMA4_FAMILY = ("gemma4", "diffusion-gemma")  # same layers, same metadata rules

_GEMMA3_SWA_PERIOD = 6
_GEMMA3_27B_LAYERS = 62  # llama.cpp's LLM_TYPE_27B for gemma3, the one size whose scale is not head_dim
_DEFAULT_ROPE_BASE = 10000.0  # llama.cpp's default when freq_base is absent
_DEFAULT_ROPE_BASE_SWA = 10000.0  # Gemma 3's local RoPE base
_QUERY_PRE_ATTN_SCALAR = "{arch}.attention.query_pre_attn_scalar"  # not a gguf-py key; honoured if present
_MISSING = object()


class ConfigError(ValueError):
    """The metadata lacks a required key or holds inconsistent values."""


class UnsupportedModelError(ConfigError):
    """The file's architecture (or a layout within it) is not one rullama-py can run."""


@dataclass(frozen=True)
class VisionConfig:
    n_layers: int
    d_model: int
    n_heads: int
    ffn_dim: int
    patch_size: int
    num_channels: int
    projector_scale_factor: int  # pooling factor (Gemma 4: 3x3 average pooling)
    norm_eps: float
    image_size: int  # 0 when the file does not say
    raw: dict = field(default_factory=dict, repr=False)  # every vision key, prefix stripped


@dataclass(frozen=True)
class AudioConfig:
    n_layers: int
    d_model: int
    n_heads: int
    ffn_dim: int
    norm_eps: float
    conv_kernel_size: int
    raw: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class DiffusionConfig:
    """DiffusionGemma's block-diffusion sampler defaults (transformers' generation defaults where the file is
    silent): a canvas of `canvas_length` positions denoised in at most `max_steps` steps, the temperature
    falling linearly from t_max to t_min, positions accepted while the entropy of the lower-entropy ones sums to
    at most `entropy_bound`, stopping once the argmax canvas was stable for `stability_threshold` steps and the
    mean entropy is under `confidence_threshold`."""

    canvas_length: int = 256
    max_steps: int = 48
    t_min: float = 0.4
    t_max: float = 0.8
    entropy_bound: float = 0.1
    stability_threshold: int = 1
    confidence_threshold: float = 0.005


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layers: int
    d_model: int
    vocab_size: int
    context_length: int
    norm_eps: float
    sliding_window: int  # 0: no sliding-window layers
    attn_scale: float  # multiplies q·k before the softmax
    final_logit_softcap: float  # 0.0: none
    ple_dim: int  # per-layer embedding width (Gemma 4 E2B/E4B); 0: none
    n_shared_kv_layers: int
    rope_scaling_type: str  # "none" or the file's rope.scaling.type
    # Per layer (tuples of length n_layers):
    is_sliding: tuple
    n_heads: tuple
    n_kv_heads: tuple
    head_dim: tuple  # key (and query) head size
    value_dim: tuple
    ffn_dim: tuple
    rope_base: tuple
    rope_dim: tuple  # rotated dimensions per head
    rope_scale: tuple  # position multiplier (1 / linear scaling factor); 1.0 when unscaled
    kv_donor: tuple  # layer whose K/V this layer attends over; == l when the layer has its own
    # Mixture of experts (Gemma 4 26B-A4B): every layer has the dense MLP plus `n_experts` experts of width
    # `expert_ffn_dim`, `n_experts_used` per token; 0 when the model is dense.
    n_experts: int = 0
    n_experts_used: int = 0
    expert_ffn_dim: int = 0
    vision: VisionConfig | None = None
    audio: AudioConfig | None = None
    diffusion: DiffusionConfig | None = None  # DiffusionGemma only

    @property
    def embed_scale(self) -> float:
        """Token embeddings are multiplied by sqrt(d_model) in both Gemma generations."""
        return math.sqrt(self.d_model)

    @property
    def is_gemma4(self) -> bool:
        """Gemma 4 layers (value norm, layer output scale, proportional RoPE): gemma4 and diffusion-gemma."""
        return self.arch in GEMMA4_FAMILY

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def has_kv(self) -> tuple:
        return tuple(d == l for l, d in enumerate(self.kv_donor))

    @classmethod
    def from_metadata(cls, meta: dict) -> "ModelConfig":
        arch = meta.get(Keys.General.ARCHITECTURE)
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"unsupported model architecture {arch!r}: rullama-py runs {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        return _build(_Meta(meta, arch))


class _Meta:
    """Typed access to `<arch>.`-keys with clear errors."""

    def __init__(self, meta: dict, arch: str):
        self.meta = meta
        self.arch = arch

    def key(self, template: str) -> str:
        return template.format(arch=self.arch)

    def has(self, template: str) -> bool:
        return self.key(template) in self.meta

    def get(self, template: str, default=_MISSING, cast=int):
        k = self.key(template)
        v = self.meta.get(k, _MISSING)
        if v is _MISSING:
            if default is _MISSING:
                raise ConfigError(f"{self.arch} model metadata lacks required key {k!r}")
            return default
        if isinstance(v, (list, tuple, np.ndarray)):
            raise ConfigError(f"{k!r} should be a single value, got an array of {len(v)}")
        try:
            return cast(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{k!r} has a bad value {v!r}") from None

    def per_layer(self, template: str, n_layers: int, default=_MISSING, cast=int) -> tuple:
        """A key that is either one value for every layer or an array with one entry per layer."""
        k = self.key(template)
        v = self.meta.get(k, _MISSING)
        if v is _MISSING:
            if default is _MISSING:
                raise ConfigError(f"{self.arch} model metadata lacks required key {k!r}")
            return tuple(default) if isinstance(default, (list, tuple)) else (default,) * n_layers
        if isinstance(v, (list, tuple, np.ndarray)):
            if len(v) != n_layers:
                raise ConfigError(f"{k!r} has {len(v)} entries for {n_layers} layers")
            return tuple(cast(x) for x in v)
        return (cast(v),) * n_layers


def _positive(name: str, values) -> None:
    for v in values if isinstance(values, tuple) else (values,):
        if v <= 0:
            raise ConfigError(f"{name} must be positive, got {v}")


def _swa_from_period(n_layers: int, period: int) -> tuple:
    # llama.cpp set_swa_pattern(n): the last layer of every group of n is global; n == 0 -> all sliding.
    return tuple(period == 0 or (i % period) < (period - 1) for i in range(n_layers))


def _sliding_pattern(m: _Meta, n_layers: int, default_period: int | None) -> tuple:
    k = m.key(Keys.Attention.SLIDING_WINDOW_PATTERN)
    v = m.meta.get(k, _MISSING)
    if v is _MISSING:
        if default_period is None:
            raise ConfigError(f"{m.arch} model metadata lacks required key {k!r}")
        return _swa_from_period(n_layers, default_period)
    if isinstance(v, (list, tuple, np.ndarray)):
        if len(v) != n_layers:
            raise ConfigError(f"{k!r} has {len(v)} entries for {n_layers} layers")
        return tuple(bool(x) for x in v)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ConfigError(f"{k!r} has a bad value {v!r}")
    return _swa_from_period(n_layers, int(v))


def _sub_config(m: _Meta, kind: str):
    """`<arch>.vision.*` (Ollama's monolithic blobs) or `clip.vision.*` (llama.cpp mmproj files)."""
    for prefix in (f"{m.arch}.{kind}.", f"clip.{kind}."):
        raw = {k[len(prefix) :]: v for k, v in m.meta.items() if k.startswith(prefix)}
        if "block_count" in raw:
            return raw
    return None


def _vision(m: _Meta) -> VisionConfig | None:
    raw = _sub_config(m, "vision")
    if raw is None:
        return None
    suffix = lambda key: key[len("clip.vision.") :]  # noqa: E731  (names from gguf-py's Keys.ClipVision)
    V = Keys.ClipVision
    g = lambda key, default=0, cast=int: cast(raw.get(suffix(key), default))  # noqa: E731
    return VisionConfig(
        n_layers=g(V.BLOCK_COUNT),
        d_model=g(V.EMBEDDING_LENGTH),
        n_heads=g(V.Attention.HEAD_COUNT),
        ffn_dim=g(V.FEED_FORWARD_LENGTH),
        patch_size=g(V.PATCH_SIZE),
        num_channels=int(raw.get("num_channels", 3)),
        projector_scale_factor=g(V.Projector.SCALE_FACTOR, 1),
        norm_eps=g(V.Attention.LAYERNORM_EPS, 1e-6, float),
        image_size=g(V.IMAGE_SIZE),
        raw=raw,
    )


def vision_config(meta: dict) -> VisionConfig | None:
    """The vision tower of a model file (`<arch>.vision.*`, Ollama's blobs) or of a llama.cpp mmproj
    (`clip.vision.*`, architecture "clip"); None when the file has none."""
    return _vision(_Meta(meta, str(meta.get(Keys.General.ARCHITECTURE, ""))))


def _audio(m: _Meta) -> AudioConfig | None:
    raw = _sub_config(m, "audio")
    if raw is None:
        return None
    suffix = lambda key: key[len("clip.audio.") :]  # noqa: E731
    A = Keys.ClipAudio
    g = lambda key, default=0, cast=int: cast(raw.get(suffix(key), default))  # noqa: E731
    return AudioConfig(
        n_layers=g(A.BLOCK_COUNT),
        d_model=g(A.EMBEDDING_LENGTH),
        n_heads=g(A.Attention.HEAD_COUNT),
        ffn_dim=g(A.FEED_FORWARD_LENGTH),
        norm_eps=g(A.Attention.LAYERNORM_EPS, 1e-6, float),
        conv_kernel_size=g(A.CONV_KERNEL_SIZE),
        raw=raw,
    )


def audio_config(meta: dict) -> AudioConfig | None:
    """The audio tower of a model file (`<arch>.audio.*`) or of a llama.cpp mmproj (`clip.audio.*`); None when
    the file has none."""
    return _audio(_Meta(meta, str(meta.get(Keys.General.ARCHITECTURE, ""))))


def _build(m: _Meta) -> ModelConfig:
    arch = m.arch
    gemma4 = arch in GEMMA4_FAMILY
    n_layers = m.get(Keys.LLM.BLOCK_COUNT)
    d_model = m.get(Keys.LLM.EMBEDDING_LENGTH)
    _positive(m.key(Keys.LLM.BLOCK_COUNT), n_layers)
    _positive(m.key(Keys.LLM.EMBEDDING_LENGTH), d_model)
    L = n_layers

    n_heads = m.per_layer(Keys.Attention.HEAD_COUNT, L)
    n_kv_heads = m.per_layer(Keys.Attention.HEAD_COUNT_KV, L, default=n_heads)
    _positive(m.key(Keys.Attention.HEAD_COUNT), n_heads)
    _positive(m.key(Keys.Attention.HEAD_COUNT_KV), n_kv_heads)
    for h, kv in zip(n_heads, n_kv_heads):
        if h % kv:
            raise ConfigError(f"{h} query heads cannot be grouped over {kv} KV heads")
    ffn_dim = m.per_layer(Keys.LLM.FEED_FORWARD_LENGTH, L)

    sliding_window = m.get(Keys.Attention.SLIDING_WINDOW, 0)
    if gemma4:
        is_sliding = _sliding_pattern(m, L, default_period=None)
    elif sliding_window > 0:
        is_sliding = _sliding_pattern(m, L, default_period=_GEMMA3_SWA_PERIOD)
    else:
        is_sliding = (False,) * L  # llama.cpp: no sliding_window key (or 0) means no SWA layers at all

    key_len = m.get(Keys.Attention.KEY_LENGTH, d_model // n_heads[0])
    val_len = m.get(Keys.Attention.VALUE_LENGTH, key_len)
    key_len_swa = m.get(Keys.Attention.KEY_LENGTH_SWA, key_len)
    val_len_swa = m.get(Keys.Attention.VALUE_LENGTH_SWA, val_len)
    head_dim = tuple(key_len_swa if s else key_len for s in is_sliding)
    value_dim = tuple(val_len_swa if s else val_len for s in is_sliding)
    _positive("head size", head_dim)

    base = m.get(Keys.Rope.FREQ_BASE, _DEFAULT_ROPE_BASE, float)
    base_swa = m.get(Keys.Rope.FREQ_BASE_SWA, _DEFAULT_ROPE_BASE_SWA if not gemma4 else base, float)
    rope_base = tuple(base_swa if s else base for s in is_sliding)
    rot = m.get(Keys.Rope.DIMENSION_COUNT, None)
    rot_swa = m.get(Keys.Rope.DIMENSION_COUNT_SWA, None)
    rope_dim = tuple(
        (rot_swa if rot_swa is not None else hd) if s else (rot if rot is not None else hd)
        for s, hd in zip(is_sliding, head_dim)
    )

    scaling_type = m.get(Keys.Rope.SCALING_TYPE, "none", str)
    factor = m.get(Keys.Rope.SCALING_FACTOR, 0.0, float)
    scale = 1.0 / factor if scaling_type == "linear" and factor > 0 else 1.0
    # gemma3 (llama.cpp): the local layers are never scaled; gemma4 keeps llama.cpp's default (same as global).
    rope_scale = tuple((1.0 if not gemma4 else scale) if s else scale for s in is_sliding)

    n_shared = m.get(Keys.Attention.SHARED_KV_LAYERS, 0) if gemma4 else 0
    kv_donor = _kv_donors(is_sliding, n_shared) if gemma4 else tuple(range(L))

    if gemma4:
        attn_scale = 1.0  # Gemma 4 normalises q and k instead of scaling (HF self.scaling = 1.0)
    elif m.has(_QUERY_PRE_ATTN_SCALAR):
        attn_scale = m.get(_QUERY_PRE_ATTN_SCALAR, cast=float) ** -0.5
    elif L == _GEMMA3_27B_LAYERS:
        attn_scale = float(d_model // n_heads[0]) ** -0.5
    else:
        attn_scale = float(head_dim[0]) ** -0.5

    n_experts = m.get(Keys.LLM.EXPERT_COUNT, 0)
    n_used = m.get(Keys.LLM.EXPERT_USED_COUNT, 0)
    expert_ff = m.get(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, 0)
    if n_experts:
        if not 1 <= n_used <= n_experts:
            raise ConfigError(f"{m.key(Keys.LLM.EXPERT_USED_COUNT)} = {n_used}: must be 1..{n_experts} experts")
        _positive(m.key(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), expert_ff)

    vocab = m.meta.get(m.key(Keys.LLM.VOCAB_SIZE))
    if vocab is None:
        tokens = m.meta.get(Keys.Tokenizer.LIST)
        vocab = len(tokens) if tokens is not None else 0

    return ModelConfig(
        arch=arch,
        n_layers=L,
        d_model=d_model,
        vocab_size=int(vocab),
        context_length=m.get(Keys.LLM.CONTEXT_LENGTH, 0),
        norm_eps=m.get(Keys.Attention.LAYERNORM_RMS_EPS, 1e-6, float),
        sliding_window=sliding_window if any(is_sliding) else 0,
        attn_scale=attn_scale,
        final_logit_softcap=m.get(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, 0.0, float),
        ple_dim=m.get(Keys.LLM.EMBD_LENGTH_PER_LAYER_INP, 0),
        n_shared_kv_layers=n_shared,
        rope_scaling_type=scaling_type,
        is_sliding=is_sliding,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        value_dim=value_dim,
        ffn_dim=ffn_dim,
        rope_base=rope_base,
        rope_dim=rope_dim,
        rope_scale=rope_scale,
        kv_donor=kv_donor,
        n_experts=n_experts,
        n_experts_used=n_used if n_experts else 0,
        expert_ffn_dim=expert_ff if n_experts else 0,
        vision=_vision(m),
        audio=_audio(m),
        diffusion=_diffusion(m) if arch == "diffusion-gemma" else None,
    )


def _diffusion(m: _Meta) -> DiffusionConfig:
    d = DiffusionConfig()
    g = lambda key, default, cast: m.get("{arch}.diffusion." + key, default, cast)  # noqa: E731
    cfg = DiffusionConfig(
        canvas_length=g("canvas_length", d.canvas_length, int),
        max_steps=g("eb_max_steps", d.max_steps, int),
        t_min=g("eb_t_min", d.t_min, float),
        t_max=g("eb_t_max", d.t_max, float),
        entropy_bound=g("entropy_bound", d.entropy_bound, float),
        stability_threshold=g("stability_threshold", d.stability_threshold, int),
        confidence_threshold=g("confidence_threshold", d.confidence_threshold, float),
    )
    _positive(m.key("{arch}.diffusion.canvas_length"), cfg.canvas_length)
    _positive(m.key("{arch}.diffusion.eb_max_steps"), cfg.max_steps)
    if not 0 < cfg.t_min <= cfg.t_max:
        raise ConfigError(f"diffusion temperatures t_min {cfg.t_min} and t_max {cfg.t_max} must be 0 < t_min <= t_max")
    return cfg


def _kv_donors(is_sliding: tuple, n_shared: int) -> tuple:
    """llama.cpp's Gemma 4 KV reuse: layers from n_kv = L - n_shared on attend over layer n_kv - 2 (sliding)
    or n_kv - 1 (global). Those two must be of the matching kind, or the caches would not fit."""
    L = len(is_sliding)
    if n_shared == 0:
        return tuple(range(L))
    n_kv = L - n_shared
    if n_shared < 0 or n_kv < 2:
        raise UnsupportedModelError(f"shared_kv_layers = {n_shared} leaves {n_kv} of {L} layers with their own KV")
    donors = []
    for l in range(L):
        if l < n_kv:
            donors.append(l)
            continue
        d = n_kv - 2 if is_sliding[l] else n_kv - 1
        if is_sliding[d] != is_sliding[l]:
            kind = "sliding" if is_sliding[l] else "global"
            raise UnsupportedModelError(
                f"KV sharing: layer {l} ({kind}) would reuse layer {d}, which is not {kind} "
                "(llama.cpp's layout needs layers n_kv-2 sliding and n_kv-1 global)"
            )
        donors.append(d)
    return tuple(donors)
