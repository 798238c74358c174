"""rullama-py: Gemma 4 / Gemma 3 inference with hand-written WGSL kernels, natively on wgpu-py and in the
browser inside Pyodide."""

__version__ = "0.1.0"
