"""``audio_expand_residual``: the SAAVM's way back for audio with the batch norm after it folded.

    audio_expand_residual(audio (B, C, L), tokens (B, T, D), weight (C, 1, K), bias (C,), scale (C,))
        -> (B, C, L) = scale * audio + bias + Conv1d(1 -> C, K, 'same')(the tokens interpolated to L)

The same function as ``avfused.reference.audio_expand_residual`` (the folded SAAVM's, avfused.inference, and the
training SAAVM's). Two backends:

* ``ext`` -- the op ``avfused_ext::audio_expand_residual`` and its backward
  ``avfused_ext::audio_expand_residual_backward`` (csrc/audio_expand_residual/), so the op trains too. CPU:
  C++, the forward one pass over the audio, the backward one pass over the output gradient in tiles of
  positions (the interpolated signals, B L values, computed once; the weight, bias and scale sums per thread
  in double). CUDA: blocks of (clip, tile of positions, group of channels; as many groups as batch 1 needs
  to fill the device), each interpolating its tile of the signal from the tokens into shared memory; the
  forward one thread per position, the backward one pass over the gradient for grad_audio, the per-tile
  weight, bias and scale sums (added in a fixed order in double: no atomics) and the transposed
  convolution, then one warp per token value gathering the positions that read it for the token gradient.
  float32, float16 and bfloat16 activations (audio, tokens and grad in audio's dtype), float32 weights and
  accumulation.
* ``triton`` -- ``avfused_triton::audio_expand_signal_residual`` and its backward
  (kernels/audio_expand_residual.py): the interpolation of the tokens (one channel) in torch, then one pass
  over the audio (or the gradient); float32 activations (fp16 / bf16 on CUDA).
"""

from __future__ import annotations

import torch

from avfused import reference
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
OP = "audio_expand_residual"
# where avfused.backends sends the op to the extension: the CUDA kernels (run by ext on CUDA tensors) join once
# their GPU tests (tests/ops/test_audio_expand_residual.py, marked gpu) have passed on a GPU; until then models
# on GPUs run its Triton kernels (auto) or the reference
EXT_DEVICES = ("cpu",)


def check_inputs(backend: str, audio: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor, scale: Tensor) -> None:
    """The op's one validator: named errors before any kernel runs."""
    check_tensors(OP, backend, audio=audio, tokens=tokens, weight=weight, bias=bias, scale=scale)
    check_rank(OP, "audio", audio, 3, "(B, C, L)")
    check_non_empty(OP, "audio", audio, "(B, C, L)", "clips")
    check_rank(OP, "tokens", tokens, 3, "(B, T, D)")
    check_non_empty(OP, "tokens", tokens, "(B, T, D)", "clips")
    clips, channels = audio.shape[:2]
    check_shape(OP, "tokens", tokens, (clips, None, None), "(B, T, D)")
    check_rank(OP, "weight", weight, 3, "(C, 1, K)")
    check_shape(OP, "weight", weight, (channels, 1, None), "(C, 1, K)")
    if weight.shape[-1] % 2 != 1:
        raise InputShapeError(f"{OP}: the kernel size must be odd ('same' padding), got {weight.shape[-1]}")
    check_shape(OP, "bias", bias, (channels,), "(C,)")
    check_shape(OP, "scale", scale, (channels,), "(C,)")


# ---------------------------------------------------------------------------------------------
# triton: from the interpolated signal on in one kernel each way; the interpolation (one channel) is torch's
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("avfused_triton::audio_expand_signal_residual", mutates_args=())
def triton_forward(audio: Tensor, signal: Tensor, weight: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    """audio (B, C, L), signal (B, L), weight (C, K), bias and scale (C,); contiguous, audio and signal float32
    (or fp16 / bf16 on CUDA) -> (B, C, L) in audio's dtype."""
    from avfused.kernels.audio_expand_residual import launch_forward

    return launch_forward(audio, signal, weight, bias, scale)


@triton_forward.register_fake
def _(audio, signal, weight, bias, scale):
    return audio.new_empty(audio.shape)


@torch.library.custom_op("avfused_triton::audio_expand_signal_residual_backward", mutates_args=())
def triton_backward(grad: Tensor, audio: Tensor, signal: Tensor, weight: Tensor, scale: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of triton_forward for audio, signal, weight, bias and scale, in one Triton kernel."""
    from avfused.kernels.audio_expand_residual import launch_backward

    d_audio, d_signal, d_weight, d_bias, d_scale = launch_backward(grad, audio, signal, weight, scale)
    return d_audio, d_signal.to(signal.dtype), d_weight, d_bias, d_scale


@triton_backward.register_fake
def _(grad, audio, signal, weight, scale):
    return (audio.new_empty(audio.shape), signal.new_empty(signal.shape), weight.new_empty(weight.shape),
            scale.new_empty(scale.shape), scale.new_empty(scale.shape))


def _triton_setup_context(ctx, inputs, output) -> None:
    audio, signal, weight, _, scale = inputs
    ctx.save_for_backward(audio, signal, weight, scale)


def _triton_autograd(ctx, grad: Tensor):
    return triton_backward(grad.contiguous(), *ctx.saved_tensors)


triton_forward.register_autograd(_triton_autograd, setup_context=_triton_setup_context)


def triton(audio: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    """The Triton backend of the op; returns audio's dtype."""
    check_inputs("triton", audio, tokens, weight, bias, scale)
    signal = reference.tokens_to_audio(tokens, audio.shape[-1]).to(audio.dtype)
    flat = (audio, signal, weight.reshape(audio.shape[1], -1), bias, scale)
    return triton_forward(*(t.contiguous() for t in flat))


# ---------------------------------------------------------------------------------------------
# ext: the C++ (and CUDA) extension
# ---------------------------------------------------------------------------------------------
def ext(audio: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    """The extension backend of the op; returns audio's dtype (computed in float32)."""
    check_inputs("ext", audio, tokens, weight, bias, scale)
    activations = ext_activation_dtype(audio)
    out = torch.ops.avfused_ext.audio_expand_residual(audio.to(activations), tokens.to(activations), weight.float(),
                                                      bias.float(), scale.float())
    return out.to(audio.dtype)


def _fake(audio, tokens, weight, bias, scale):
    return audio.new_empty(audio.shape)


register_autocast("avfused_triton::audio_expand_signal_residual", (0, 1), TRITON_DTYPES)
if EXT_REASONS["cpu"] is None:
    register_trainable_ext(OP, _fake)
    register_autocast("avfused_ext::audio_expand_residual", (0, 1), EXT_HALF_ON_CUDA)
