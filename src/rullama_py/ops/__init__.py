"""Tensor ops. Each op records one WGSL kernel (shaders/<kernel>.wgsl) into a gpu.Graph and has one numpy
reference in tests/. Ops are async only because compiling a pipeline is; recording happens once per graph,
never per token. Modules by family:

- norm:      rms_norm
"""

from .norm import rms_norm  # noqa: F401
