"""``audio_squeeze_stats``: the batch statistics of the SAAVM's audio squeeze convolution (its batch norm's, in
training).

    audio_squeeze_stats(audio (B, C, L), weight (C, C, K), bias (C,)) -> (mean (C,), var (C,))
        z = Conv1d(C -> C, K, 'same')(audio) + bias; mean and biased variance of z over (B, L)

The same function as ``avfused.reference.audio_squeeze_stats``. In training the SAAVM folds the batch norm
with these statistics into the convolution (w' = w g / sqrt(var + eps), b' = (b - mean) g / sqrt(var + eps) +
beta) and hands w', b' to ``audio_squeeze_tokens``, so that the (B, C, L) z and hidden layer never reach
memory; gradients flow through the fold into mean and var, and from there back here. Two backends:

* ``ext`` -- the op ``avfused_ext::audio_squeeze_stats`` and its backward
  ``avfused_ext::audio_squeeze_stats_backward(grad_mean, grad_var, audio, weight, bias, mean)``
  (csrc/audio_squeeze_stats/); z never exists beyond a tile, the tiles' moments are merged in double in a
  fixed order (no float32 E[z^2] - E[z]^2), and the backward recomputes z per tile to form grad_z =
  grad_mean / M + 2 grad_var (z - mean) / M (M = B L). CPU: z from the dense Conv1d tile kernel
  audio_squeeze_tokens uses (faster than ATen's convolution at these shapes), each tile's moments in double,
  the tile backward on grad_z. CUDA: the forward one block per (clip, 128 positions, 8 channels), a thread
  per position, the tiles' moments merged per channel (Chan's update); the backward one block per (clip,
  tile) for the audio gradient (grad_z of every channel held in shared memory) and one per (8 channels,
  split of the tiles) for the weight and bias sums, whose per-split partials are added in a fixed order (no
  atomics: the same result every run). float32, float16 and bfloat16 audio (grad_audio in its dtype),
  float32 weights, accumulation and statistics.
* ``triton`` -- ``avfused_triton::audio_squeeze_stats`` and its backward (kernels/audio_squeeze_stats.py) for
  the SAAVM's 3-tap convolution: z as three (C, C) products per block of positions, the blocks' moments
  merged in float64; float32 audio (fp16 / bf16 on CUDA).
"""

from __future__ import annotations

import torch

from avfused.errors import InputShapeError
from avfused.ops._common import (
    EXT_HALF_ON_CUDA,
    EXT_REASONS,
    TRITON_DTYPES,
    check_non_empty,
    check_rank,
    check_shape,
    check_tensors,
    ext_activation_dtype,
    register_autocast,
    register_statistics_op,
)

Tensor = torch.Tensor
OP = "audio_squeeze_stats"
# where avfused.backends sends the op to the extension: the CUDA kernels (run by ext on CUDA tensors) join once
# their GPU tests (tests/ops/test_audio_squeeze_stats.py, marked gpu) have passed on a GPU; until then models
# on GPUs run its Triton kernels (auto) or the reference
EXT_DEVICES = ("cpu",)


def check_inputs(backend: str, audio: Tensor, weight: Tensor, bias: Tensor) -> None:
    """The op's one validator: named errors before any kernel runs."""
    check_tensors(OP, backend, audio=audio, weight=weight, bias=bias)
    check_rank(OP, "audio", audio, 3, "(B, C, L)")
    check_non_empty(OP, "audio", audio, "(B, C, L)", "clips")
    channels = audio.shape[1]
    check_rank(OP, "weight", weight, 3, "(C, C, K)")
    check_shape(OP, "weight", weight, (channels, channels, None), "(C, C, K)")
    if weight.shape[-1] % 2 != 1:
        raise InputShapeError(f"{OP}: the kernel size must be odd ('same' padding), got {weight.shape[-1]}")
    check_shape(OP, "bias", bias, (channels,), "(C,)")


# ---------------------------------------------------------------------------------------------
# triton
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("avfused_triton::audio_squeeze_stats", mutates_args=())
def triton_forward(audio: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """audio (B, C, L), weight (3, C, C) tap-major, bias (C,); contiguous, audio float32 (or fp16 / bf16 on
    CUDA) -> (mean (C,), var (C,)) float32."""
    from avfused.kernels.audio_squeeze_stats import launch_forward

    return launch_forward(audio, weight, bias)


@torch.library.custom_op("avfused_triton::audio_squeeze_stats_backward", mutates_args=())
def triton_backward(grad_mean: Tensor, grad_var: Tensor, audio: Tensor, weight: Tensor, bias: Tensor,
                    mean: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of triton_forward for audio, weight and bias, in one Triton kernel."""
    from avfused.kernels.audio_squeeze_stats import launch_backward

    return launch_backward(grad_mean, grad_var, audio, weight, bias, mean)


register_statistics_op("avfused_triton::audio_squeeze_stats")


def triton(audio: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """The Triton backend of the op: (mean, var) in float32."""
    check_inputs("triton", audio, weight, bias)
    if weight.shape[-1] != 3:
        raise InputShapeError(f"{OP}: the triton kernel computes the SAAVM's 3-tap convolution; weight has "
                              f"{weight.shape[-1]} taps (the ext and torch backends take any odd count)")
    flat = (audio, weight.permute(2, 0, 1), bias)
    return triton_forward(*(t.contiguous() for t in flat))


# ---------------------------------------------------------------------------------------------
# ext: the C++ (and CUDA) extension
# ---------------------------------------------------------------------------------------------
def ext(audio: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """The extension backend of the op; returns audio's dtype (computed in float32, the sums in double)."""
    check_inputs("ext", audio, weight, bias)
    activations = ext_activation_dtype(audio)
    mean, var = torch.ops.avfused_ext.audio_squeeze_stats(audio.to(activations), weight.float(), bias.float())
    return mean.to(audio.dtype), var.to(audio.dtype)


register_autocast("avfused_triton::audio_squeeze_stats", (0,), TRITON_DTYPES)
if EXT_REASONS["cpu"] is None:
    register_statistics_op("avfused_ext::audio_squeeze_stats")
    register_autocast("avfused_ext::audio_squeeze_stats", (0,), EXT_HALF_ON_CUDA)
