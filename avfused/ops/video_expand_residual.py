"""``video_expand_residual``: the SAAVM's way back for video with the batch norm after it folded.

    video_expand_residual(video (B*T, C, H, W), tokens (B, T * ceil(H/w) * ceil(W/w), w*w),
                          weight (C, 1, 3, 3), bias (C,), scale (C,), window w) -> (B*T, C, H, W)
        = scale * video + bias + Conv2d(1 -> C, 3x3, 'same')(the tokens laid back as maps)

The same function as ``avfused.reference.video_expand_residual`` (the folded SAAVM's, avfused.inference, and
the training SAAVM's: with scale = ones it is the plain residual, the layer scale folded into weight and bias).
Two backends:

* ``ext`` -- the op ``avfused_ext::video_expand_residual`` and its backward
  ``avfused_ext::video_expand_residual_backward`` (csrc/video_expand_residual/), so the op trains too. CPU:
  C++, the forward one pass over the video, the backward one pass over the output gradient per image (the
  map laid out again; the weight, bias and scale sums per thread in double). CUDA: the forward one thread
  per output, the backward one pass over the gradient per channel for grad_video and the sums (float32,
  added with atomics) and one thread per token value for the token gradient; the map is read straight from
  the tokens. float32, float16 and bfloat16 activations (video, tokens and grad in video's dtype), float32
  weights and accumulation.
* ``triton`` -- ``avfused_triton::video_expand_residual`` and its backward (kernels/video_expand_residual.py):
  one program per (image, block of pixels), the map gathered from the tokens, one pass over the video (or
  the gradient) each; float32 activations (fp16 / bf16 on CUDA).
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
    register_trainable_ext,
)

Tensor = torch.Tensor
OP = "video_expand_residual"
# where avfused.backends sends the op to the extension: the CUDA kernels (run by ext on CUDA tensors) join once
# their GPU tests (tests/ops/test_video_expand_residual.py, marked gpu) have passed on a GPU; until then models
# on GPUs run its Triton kernels (auto) or the reference
EXT_DEVICES = ("cpu",)


def check_inputs(backend: str, video: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor, scale: Tensor,
                 window: int) -> None:
    """The op's one validator: named errors before any kernel runs."""
    check_tensors(OP, backend, video=video, tokens=tokens, weight=weight, bias=bias, scale=scale)
    check_rank(OP, "video", video, 4, "(B*T, C, H, W)")
    check_non_empty(OP, "video", video, "(B*T, C, H, W)", "images")
    check_rank(OP, "tokens", tokens, 3, "(B, T * windows, window**2)")
    check_non_empty(OP, "tokens", tokens, "(B, T * windows, window**2)", "clips")
    images, channels, height, width = video.shape
    if window < 1 or images % tokens.shape[0]:
        raise InputShapeError(f"{OP}: {images} images are not whole clips of the {tokens.shape[0]} clips of tokens "
                              f"(or window={window} < 1)")
    windows = (images // tokens.shape[0]) * -(-height // window) * -(-width // window)
    check_shape(OP, "tokens", tokens, (tokens.shape[0], windows, window * window), "(B, T * windows, window**2)")
    check_shape(OP, "weight", weight, (channels, 1, 3, 3), "(C, 1, 3, 3)")
    check_shape(OP, "bias", bias, (channels,), "(C,)")
    check_shape(OP, "scale", scale, (channels,), "(C,)")


# ---------------------------------------------------------------------------------------------
# triton
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("avfused_triton::video_expand_residual", mutates_args=())
def triton_forward(video: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor, scale: Tensor, window: int) -> Tensor:
    """video (N, C, H, W), tokens (B, L, window**2), weight (C, 9), bias and scale (C,); contiguous, video and
    tokens float32 (or fp16 / bf16 on CUDA) -> (N, C, H, W) in video's dtype."""
    from avfused.kernels.video_expand_residual import launch_forward

    return launch_forward(video, tokens, weight, bias, scale, window)


@triton_forward.register_fake
def _(video, tokens, weight, bias, scale, window):
    return video.new_empty(video.shape)


@torch.library.custom_op("avfused_triton::video_expand_residual_backward", mutates_args=())
def triton_backward(grad: Tensor, video: Tensor, tokens: Tensor, weight: Tensor, scale: Tensor, window: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of triton_forward for video, tokens, weight, bias and scale, in one Triton kernel."""
    from avfused.kernels.video_expand_residual import launch_backward

    return launch_backward(grad, video, tokens, weight, scale, window)


@triton_backward.register_fake
def _(grad, video, tokens, weight, scale, window):
    return (video.new_empty(video.shape), tokens.new_empty(tokens.shape), weight.new_empty(weight.shape),
            scale.new_empty(scale.shape), scale.new_empty(scale.shape))


def _triton_setup_context(ctx, inputs, output) -> None:
    video, tokens, weight, _, scale, ctx.window = inputs
    ctx.save_for_backward(video, tokens, weight, scale)


def _triton_autograd(ctx, grad: Tensor):
    return (*triton_backward(grad.contiguous(), *ctx.saved_tensors, ctx.window), None)


triton_forward.register_autograd(_triton_autograd, setup_context=_triton_setup_context)


def triton(video: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor, scale: Tensor, window: int) -> Tensor:
    """The Triton backend of the op; returns video's dtype."""
    check_inputs("triton", video, tokens, weight, bias, scale, window)
    flat = (video, tokens.to(video.dtype), weight.reshape(video.shape[1], 9), bias, scale)
    return triton_forward(*(t.contiguous() for t in flat), window)


# ---------------------------------------------------------------------------------------------
# ext: the C++ (and CUDA) extension
# ---------------------------------------------------------------------------------------------
def ext(video: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor, scale: Tensor, window: int) -> Tensor:
    """The extension backend of the op; returns video's dtype (computed in float32)."""
    check_inputs("ext", video, tokens, weight, bias, scale, window)
    activations = ext_activation_dtype(video)
    out = torch.ops.avfused_ext.video_expand_residual(video.to(activations), tokens.to(activations), weight.float(),
                                                      bias.float(), scale.float(), window)
    return out.to(video.dtype)


def _fake(video, tokens, weight, bias, scale, window):
    return video.new_empty(video.shape)


register_autocast("avfused_triton::video_expand_residual", (0, 1), TRITON_DTYPES)
if EXT_REASONS["cpu"] is None:
    register_trainable_ext(OP, _fake)
    register_autocast("avfused_ext::video_expand_residual", (0, 1), EXT_HALF_ON_CUDA)
