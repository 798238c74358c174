"""Tensor ops. Each op records one WGSL kernel (shaders/<kernel>.wgsl) into a gpu.Graph and has one numpy
reference in tests/. Ops are async only because compiling a pipeline is; recording happens once per graph,
never per token. Modules by family:

- norm:      rms_norm
- matmul:    matmul, embed (weights kept as raw GGUF bytes, dequantised in the kernels)
- attention: rope, rope_2d (vision tower), kv_store (kv_cache, kv_slots, kv_cache_bytes), attention (causal
             or bidirectional)
- nn:        gelu_mul, add, scale_inplace, softcap, clamp and standardize (vision tower)
- pool:      avg_pool_2d (vision tower)
- rows:      select_row
- ple:       ple_gate (Gemma 4 per-layer embeddings)
"""

from .norm import rms_norm  # noqa: F401
from .matmul import embed, matmul  # noqa: F401
from .attention import attention, kv_cache, kv_cache_bytes, kv_slots, kv_store, rope, rope_2d  # noqa: F401
from .nn import add, clamp, gelu_mul, scale_inplace, softcap, standardize  # noqa: F401
from .pool import avg_pool_2d  # noqa: F401
from .rows import select_row  # noqa: F401
from .ple import ple_gate  # noqa: F401
