"""Tensor ops. Each op records one WGSL kernel (shaders/<kernel>.wgsl) into a gpu.Graph and has one numpy
reference in tests/. Ops are async only because compiling a pipeline is; recording happens once per graph,
never per token. Modules by family:

- norm:      rms_norm
- matmul:    matmul, matmul_geglu, matvec_gelu_gate, embed (weights kept as raw GGUF bytes, dequantised in
             the kernels; the fused variants run their elementwise op as the matrix-vector kernel's epilogue,
             and StreamNorm forms a product's input from the residual stream in its prologue)
- attention: rope, rope_2d (vision tower), kv_store (kv_cache in f16 or q8_0, kv_slots, kv_cache_bytes), attention_inputs
             (q/k norms, RoPE, v norm and the cache store in one dispatch), attention (causal
             or bidirectional), attention_decode (both for one token, the inputs inside attention's
             kernels), self_attention (f32, one short sequence: Kokoro's PL-BERT)
- nn:        gelu_mul, add, scale_inplace, softcap, clamp and standardize (vision tower), glu, silu and
             bias_add (audio tower)
- pool:      avg_pool_2d (vision tower)
- conv:      conv2d_ln_relu (a subsampler stage: Conv2d 3x3 stride 2 + LayerNorm + ReLU, time length read from
             the Step uniform) and depthwise_conv1d (causal), the audio tower's convolutions
- rows:      select_row
- ple:       ple_gate, ple_input (Gemma 4 per-layer embeddings)
- local_attention: local_attention (Gemma 4 audio tower: chunked local attention, relative positions, soft cap)
- lstm:      lstm (Kokoro: the recurrence of a bidirectional LSTM, both directions in one dispatch; lstm_weights)
- Kokoro's norms and small ops: norm.layer_norm (+ weight/bias, AdaLayerNorm style, LeakyReLU),
             norm.instance_norm_coeffs (AdaIN1d as a per-channel scale/shift), norm.affine_act; nn.gelu,
             nn.durations; rows.gather_rows (the alignment), rows.broadcast_row
- signal:    harmonic_source, stft, istft (Kokoro's iSTFTNet generator: the hn-NSF source, its STFT, the
             inverse STFT; source_noise, source_params)
- mel:       log_mel_frames, mel_signature (the voice trainer's timbre signature and loss; mel_tables)
- search:    style_perturb (the voice trainer's seeded candidate; search_params, search_noise)
- moe:       moe_route, moe_group, expert_matmul, expert_matmul_sum (Gemma 4 26B-A4B's mixture of experts)
- denoise:   DiffusionGemma's sampler step (Denoiser; denoise_noise, denoise_probs, denoise_accept and their
             uniform, report and host-side noise) and mix_rows (the self-conditioning input, P @ E)
"""

from .norm import rms_norm  # noqa: F401
from .matmul import embed, matmul, matmul_geglu, matvec_gelu_gate  # noqa: F401
from .matmul import StreamNorm, stream_norm_fits  # noqa: F401
from .attention import attention, attention_decode, attention_inputs, kv_cache, kv_cache_bytes, kv_slots, kv_store, rope, rope_2d  # noqa: F401
from .attention import KV_CACHE_TYPES, check_kv_cache_type, kv_cache_type  # noqa: F401
from .attention import self_attention  # noqa: F401
from .nn import add, clamp, gelu_mul, scale_inplace, softcap, standardize  # noqa: F401
from .pool import avg_pool_2d  # noqa: F401
from .nn import bias_add, glu, silu  # noqa: F401
from .conv import conv2d_ln_relu, conv2d_out_len, depthwise_conv1d  # noqa: F401
from .conv import conv1d, conv_transpose1d  # noqa: F401
from .rows import select_row  # noqa: F401
from .ple import ple_gate, ple_input  # noqa: F401
from .local_attention import local_attention  # noqa: F401
from .lstm import lstm, lstm_weights  # noqa: F401
from .norm import affine_act, instance_norm_coeffs, instance_norm_scratch_size, layer_norm  # noqa: F401
from .nn import durations, gelu  # noqa: F401
from .rows import broadcast_row, gather_rows  # noqa: F401
from .signal import harmonic_source, istft, stft  # noqa: F401
from .mel import log_mel_frames, mel_signature, mel_tables  # noqa: F401
from .search import search_noise, search_params, search_params_bytes, style_perturb  # noqa: F401
from .moe import expert_matmul, expert_matmul_sum, moe_group, moe_groups_size, moe_route  # noqa: F401
from .denoise import Denoiser, DenoiseReport, denoise_accept, denoise_noise, denoise_noise_host  # noqa: F401
from .denoise import denoise_params_bytes, denoise_probs, mix_rows, parse_report  # noqa: F401
