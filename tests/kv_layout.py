"""ops.kv_cache's two formats read back as values, for the tests of the kernels that write and read them, and
gguf-py's Q8_0 quantiser (the same rounding as llama.cpp's quantize_row_q8_0) as the oracle of the q8_0 stores.

Layouts (ops/attention.py, shaders/kv_read_f16.wgsl, shaders/kv_read_q8_0.wgsl): [n_kv_heads][slots] rows of
head_dim values; f16 rows are the halves; q8_0 rows are head_dim signed bytes, then head_dim / 32 f32 scales."""

import numpy as np
from gguf import GGMLQuantizationType, quants


def q8_0_parts(raw, n_kv: int, slots: int, hd: int):
    """(q int8 [n_kv, slots, hd], d float64 [n_kv, slots, hd // 32]) of a q8_0 cache's bytes."""
    words = np.frombuffer(np.asarray(raw).tobytes(), np.uint32).reshape(n_kv, slots, hd // 4 + hd // 32)
    q = np.ascontiguousarray(words[..., : hd // 4]).view(np.int8).reshape(n_kv, slots, hd)
    d = np.ascontiguousarray(words[..., hd // 4:]).view(np.float32).astype(np.float64)
    return q, d


def values(raw, cache_type: str, n_kv: int, slots: int, hd: int) -> np.ndarray:
    """The values a cache holds, float64 [n_kv, slots, hd]."""
    if cache_type == "f16":
        return np.frombuffer(np.asarray(raw).tobytes(), np.float16).astype(np.float64).reshape(n_kv, slots, hd)
    q, d = q8_0_parts(raw, n_kv, slots, hd)
    return q * np.repeat(d, 32, axis=-1)


def rounding_step(raw, cache_type: str, n_kv: int, slots: int, hd: int) -> np.ndarray:
    """Per value, the distance to a neighbouring representable value [n_kv, slots, hd]: an f16 ulp (at most
    2^-10 of the value) or the q8_0 block's scale d."""
    if cache_type == "f16":
        return np.abs(values(raw, "f16", n_kv, slots, hd)) * 2.0**-10
    _, d = q8_0_parts(raw, n_kv, slots, hd)
    return np.repeat(d, 32, axis=-1)


def gguf_q8_0(x) -> tuple[np.ndarray, np.ndarray]:
    """gguf-py's Q8_0 of x [..., n] (n a multiple of 32), as (q int8 [..., n], d float64 [..., n // 32]); d is
    rounded to f16 there, as llama.cpp stores it."""
    x = np.asarray(x, np.float32)
    blocks = quants.quantize(x.reshape(-1, x.shape[-1]), GGMLQuantizationType.Q8_0).reshape(-1, 34)
    d = np.ascontiguousarray(blocks[:, :2]).view(np.float16).astype(np.float64).reshape(*x.shape[:-1], -1)
    q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).reshape(x.shape)
    return q, d
