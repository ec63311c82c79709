"""``video_squeeze_stats``: training-mode batch-norm statistics of the SAAVM's video squeeze conv.

    video_squeeze_stats(video (B*T, C, H, W), dw_weight (C, 1, 3, 3), dw_bias (C,)) -> (mean (C,), var (C,))

The same function as ``avfused.reference.video_squeeze_stats``: the per-channel mean and biased variance of
z = dw3x3(video) + dw_bias over (B*T, H, W). With them the batch norm folds into the depthwise conv per
batch (s = bn_weight / sqrt(var + eps), dw_weight * s, (dw_bias - mean) * s + bn_bias), and
``video_squeeze_tokens`` then trains the SAAVM's video squeeze without the hidden layer in memory; autograd
through that composition is batch norm's training gradient. Two backends:

* ``ext`` -- the op ``avfused_ext::video_squeeze_stats`` and its backward op
  ``avfused_ext::video_squeeze_stats_backward`` (csrc/video_squeeze_stats/), which recompute z in both
  passes, never storing it: the variance comes from each plane's deviations around its own mean, the planes
  combined in double, so no cancellation when |mean| is far above the spread. CPU: C++ one channel plane at
  a time (float32 z, statistics and weight gradients summed in double); CUDA: one block per plane for the
  statistics, one thread per pixel for the backward (float32, float16 and bfloat16 video, float32 weights and
  accumulation, float32 statistics).
* ``triton`` -- ``avfused_triton::video_squeeze_stats`` and its backward (kernels/video_squeeze_stats.py):
  one program per (image, block of pixels) recomputes z from 9 shifted loads; the blocks' means and squared
  deviations merged in float64; float32 video (fp16 / bf16 on CUDA), float32 statistics.
"""

from __future__ import annotations

import torch

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
OP = "video_squeeze_stats"
EXT_DEVICES = ("cpu", "cuda")  # where the extension has kernels for this op


def check_inputs(backend: str, video: Tensor, dw_weight: Tensor, dw_bias: Tensor) -> None:
    """The op's one validator: named errors before any kernel runs."""
    check_tensors(OP, backend, video=video, dw_weight=dw_weight, dw_bias=dw_bias)
    check_rank(OP, "video", video, 4, "(B*T, C, H, W)")
    check_non_empty(OP, "video", video, "(B*T, C, H, W)", "images")
    channels = video.shape[1]
    check_shape(OP, "dw_weight", dw_weight, (channels, 1, 3, 3), "(C, 1, 3, 3)")
    check_shape(OP, "dw_bias", dw_bias, (channels,), "(C,)")


# ---------------------------------------------------------------------------------------------
# triton
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("avfused_triton::video_squeeze_stats", mutates_args=())
def triton_forward(video: Tensor, dw_weight: Tensor, dw_bias: Tensor) -> tuple[Tensor, Tensor]:
    """video (N, C, H, W), dw_weight (C, 9), dw_bias (C,); contiguous, video float32 (or fp16 / bf16 on CUDA)
    -> (mean (C,), var (C,)) float32."""
    from avfused.kernels.video_squeeze_stats import launch_forward

    return launch_forward(video, dw_weight, dw_bias)


@torch.library.custom_op("avfused_triton::video_squeeze_stats_backward", mutates_args=())
def triton_backward(grad_mean: Tensor, grad_var: Tensor, video: Tensor, dw_weight: Tensor, dw_bias: Tensor,
                    mean: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of triton_forward for video, dw_weight and dw_bias, in one Triton kernel."""
    from avfused.kernels.video_squeeze_stats import launch_backward

    return launch_backward(grad_mean, grad_var, video, dw_weight, dw_bias, mean)


register_statistics_op("avfused_triton::video_squeeze_stats")


def triton(video: Tensor, dw_weight: Tensor, dw_bias: Tensor) -> tuple[Tensor, Tensor]:
    """The Triton backend of the op: (mean, var) in float32."""
    check_inputs("triton", video, dw_weight, dw_bias)
    flat = (video, dw_weight.reshape(video.shape[1], 9), dw_bias)
    return triton_forward(*(t.contiguous() for t in flat))


# ---------------------------------------------------------------------------------------------
# ext: the C++ (and CUDA) extension
# ---------------------------------------------------------------------------------------------
def ext(video: Tensor, dw_weight: Tensor, dw_bias: Tensor) -> tuple[Tensor, Tensor]:
    """The extension backend of the op; returns (mean, var) in video's dtype (computed in float32, summed in
    double)."""
    check_inputs("ext", video, dw_weight, dw_bias)
    activations = ext_activation_dtype(video)
    mean, var = torch.ops.avfused_ext.video_squeeze_stats(video.to(activations), dw_weight.float(), dw_bias.float())
    return mean.to(video.dtype), var.to(video.dtype)


register_autocast("avfused_triton::video_squeeze_stats", (0,), TRITON_DTYPES)
if EXT_REASONS["cpu"] is None:
    register_statistics_op("avfused_ext::video_squeeze_stats")
    register_autocast("avfused_ext::video_squeeze_stats", (0,), EXT_HALF_ON_CUDA)
