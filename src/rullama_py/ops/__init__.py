"""Tensor ops. Each op records one WGSL kernel (shaders/<kernel>.wgsl) into a gpu.Graph and has one numpy
reference in tests/. Ops are async only because compiling a pipeline is; recording happens once per graph,
never per token. Modules by family:

- norm:      rms_norm
- matmul:    matmul, embed (weights kept as raw GGUF bytes, dequantised in the kernels)
"""

from .norm import rms_norm  # noqa: F401
from .matmul import embed, matmul  # noqa: F401
