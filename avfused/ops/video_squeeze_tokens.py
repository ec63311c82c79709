"""``video_squeeze_tokens``: the SAAVM's video squeeze (dw3x3 + ReLU + 1x1 to one channel) straight into tokens.

    video_squeeze_tokens(video (B*T, C, H, W), dw_weight (C, 1, 3, 3), dw_bias (C,), weight (1, C), bias (1,),
                         frames T, window w) -> (B, T * ceil(H/w) * ceil(W/w), w*w)

The same function as ``avfused.reference.video_squeeze_tokens`` (the folded SAAVM's, avfused.inference: its
batch norm is in dw_weight and dw_bias; in training the batch norm folds in per batch from
``video_squeeze_stats``). Two backends:

* ``ext`` -- the op ``avfused_ext::video_squeeze_tokens`` and its backward op
  ``avfused_ext::video_squeeze_tokens_backward`` (csrc/video_squeeze_tokens/), in inference and in training;
  neither writes the (B*T, C, H, W) hidden layer or the map, and the forward keeps only its inputs for the
  backward, which recomputes the hidden layer. CPU: C++ per image, one channel plane at a time (float32);
  CUDA: one thread per pixel (float32, float16 and bfloat16 video, float32 weights and accumulation).
* ``triton`` -- ``avfused_triton::video_squeeze_tokens`` and its backward (kernels/video_squeeze_tokens.py):
  one program per (image, block of pixels), the hidden layer recomputed (in the backward at the 9
  neighbours too), the map written straight into its token slots; float32 video (fp16 / bf16 on CUDA).
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
)

Tensor = torch.Tensor
OP = "video_squeeze_tokens"
EXT_DEVICES = ("cpu", "cuda")  # where the extension has kernels for this op


def check_inputs(backend: str, video: Tensor, dw_weight: Tensor, dw_bias: Tensor, weight: Tensor, bias: Tensor,
                 frames: int, window: int) -> None:
    """The op's one validator: named errors before any kernel runs."""
    check_tensors(OP, backend, video=video, dw_weight=dw_weight, dw_bias=dw_bias, weight=weight, bias=bias)
    check_rank(OP, "video", video, 4, "(B*T, C, H, W)")
    check_non_empty(OP, "video", video, "(B*T, C, H, W)", "images")
    channels = video.shape[1]
    check_shape(OP, "dw_weight", dw_weight, (channels, 1, 3, 3), "(C, 1, 3, 3)")
    check_shape(OP, "dw_bias", dw_bias, (channels,), "(C,)")
    check_shape(OP, "weight", weight, (1, channels), "(1, C)")
    check_shape(OP, "bias", bias, (1,), "(1,)")
    if frames < 1 or window < 1 or video.shape[0] % frames:
        raise InputShapeError(
            f"{OP}: {video.shape[0]} images must be whole clips of frames={frames} frames, and window={window} >= 1"
        )


# ---------------------------------------------------------------------------------------------
# triton
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("avfused_triton::video_squeeze_tokens", mutates_args=())
def triton_forward(video: Tensor, dw_weight: Tensor, dw_bias: Tensor, weight: Tensor, bias: Tensor, frames: int,
                   window: int) -> Tensor:
    """video (N, C, H, W), dw_weight (C, 9), dw_bias (C,), weight (C,), bias (1,); contiguous, video float32 (or
    fp16 / bf16 on CUDA) -> tokens (N / frames, frames * R * Q, window**2) in video's dtype."""
    from avfused.kernels.video_squeeze_tokens import launch_forward

    tokens = launch_forward(video, dw_weight, dw_bias, weight, bias, window)
    return tokens.reshape(video.shape[0] // frames, -1, window * window)


@triton_forward.register_fake
def _(video, dw_weight, dw_bias, weight, bias, frames, window):
    windows = -(-video.shape[2] // window) * -(-video.shape[3] // window)
    return video.new_empty((video.shape[0] // frames, frames * windows, window * window))


@torch.library.custom_op("avfused_triton::video_squeeze_tokens_backward", mutates_args=())
def triton_backward(grad: Tensor, video: Tensor, dw_weight: Tensor, dw_bias: Tensor, weight: Tensor, window: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of triton_forward for video, dw_weight, dw_bias, weight and bias, in one Triton kernel."""
    from avfused.kernels.video_squeeze_tokens import launch_backward

    return launch_backward(grad.reshape(-1, window * window), video, dw_weight, dw_bias, weight, window)


@triton_backward.register_fake
def _(grad, video, dw_weight, dw_bias, weight, window):
    return (video.new_empty(video.shape), dw_weight.new_empty(dw_weight.shape), dw_bias.new_empty(dw_bias.shape),
            weight.new_empty(weight.shape), dw_bias.new_empty((1,)))


def _triton_setup_context(ctx, inputs, output) -> None:
    video, dw_weight, dw_bias, weight, _, _, ctx.window = inputs
    ctx.save_for_backward(video, dw_weight, dw_bias, weight)


def _triton_autograd(ctx, grad: Tensor):
    return (*triton_backward(grad.contiguous(), *ctx.saved_tensors, ctx.window), None, None)


triton_forward.register_autograd(_triton_autograd, setup_context=_triton_setup_context)


def triton(video: Tensor, dw_weight: Tensor, dw_bias: Tensor, weight: Tensor, bias: Tensor, frames: int,
           window: int) -> Tensor:
    """The Triton backend of the op; returns video's dtype."""
    check_inputs("triton", video, dw_weight, dw_bias, weight, bias, frames, window)
    channels = video.shape[1]
    flat = (video, dw_weight.reshape(channels, 9), dw_bias, weight.reshape(channels), bias)
    return triton_forward(*(t.contiguous() for t in flat), frames, window)


# ---------------------------------------------------------------------------------------------
# ext: the C++ (and CUDA) extension
# ---------------------------------------------------------------------------------------------
def ext(video: Tensor, dw_weight: Tensor, dw_bias: Tensor, weight: Tensor, bias: Tensor, frames: int,
        window: int) -> Tensor:
    """The extension backend of the op; returns video's dtype (computed in float32)."""
    check_inputs("ext", video, dw_weight, dw_bias, weight, bias, frames, window)
    activations = ext_activation_dtype(video)
    weights = (t.float() for t in (dw_weight, dw_bias, weight, bias))
    out = torch.ops.avfused_ext.video_squeeze_tokens(video.to(activations), *weights, frames, window)
    return out.to(video.dtype)


def _register_ext() -> None:
    """Fakes and autograd of the extension's ops (their schemas and kernels come from csrc/)."""

    @torch.library.register_fake("avfused_ext::video_squeeze_tokens")
    def _(video, dw_weight, dw_bias, weight, bias, frames, window):
        windows = -(-video.shape[2] // window) * -(-video.shape[3] // window)
        return video.new_empty((video.shape[0] // frames, frames * windows, window * window))

    @torch.library.register_fake("avfused_ext::video_squeeze_tokens_backward")
    def _(grad_tokens, video, dw_weight, dw_bias, weight, bias, frames, window):
        return tuple(t.new_empty(t.shape) for t in (video, dw_weight, dw_bias, weight, bias))

    def setup_context(ctx, inputs, output):
        *tensors, ctx.frames, ctx.window = inputs
        ctx.save_for_backward(*tensors)

    def backward(ctx, grad_tokens):
        grads = torch.ops.avfused_ext.video_squeeze_tokens_backward(grad_tokens, *ctx.saved_tensors, ctx.frames,
                                                                    ctx.window)
        return (*grads, None, None)

    torch.library.register_autograd("avfused_ext::video_squeeze_tokens", backward, setup_context=setup_context)


register_autocast("avfused_triton::video_squeeze_tokens", (0,), TRITON_DTYPES)
if EXT_REASONS["cpu"] is None:
    _register_ext()
    register_autocast("avfused_ext::video_squeeze_tokens", (0,), EXT_HALF_ON_CUDA)
