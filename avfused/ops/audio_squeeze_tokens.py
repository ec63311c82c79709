"""``audio_squeeze_tokens``: the SAAVM's audio squeeze (Conv1d C -> C + ReLU + Conv1d C -> 1) straight into tokens.

    audio_squeeze_tokens(audio (B, C, L), weight (C, C, K1), bias (C,), to_one (1, C, K2), to_one_bias (1,),
                         frames T, token_dim D) -> (B, T, D)

The same function as ``avfused.reference.audio_squeeze_tokens`` (the folded SAAVM's, avfused.inference: its
batch norm is in weight and bias). Two backends:

* ``ext`` -- the op ``avfused_ext::audio_squeeze_tokens`` (csrc/audio_squeeze_tokens/), whose forward never
  writes the (B, C, L) hidden layer, and its backward ``avfused_ext::audio_squeeze_tokens_backward``, which
  recomputes the hidden layer tile by tile, so the op trains too (in training the batch norm's batch
  statistics come from ``audio_squeeze_stats`` and are folded into weight and bias first). CPU: C++, weight
  sums per thread in double. CUDA: the forward one block per (clip, 128 positions, slice of channels) holds
  the ReLU'd hidden layer of 8 channels at a time in shared memory and adds their share of the signal (the
  channels are sliced only where the clips give too few blocks), then one thread per token value pools; the
  backward one block per (clip, tile) for the audio gradient (grad_z of every channel in shared memory) and
  one per (8 channels, split of the tiles) for the weight sums, whose per-split partials are added in a fixed
  order (no atomics). float32, float16 and bfloat16 audio (tokens, grad and grad_audio in its dtype), float32
  weights and accumulation.
* ``triton`` -- ``avfused_triton::audio_squeeze_signal`` and its backward (kernels/audio_squeeze_tokens.py)
  for the SAAVM's 3-tap convolution: the one-channel signal before the pooling without the hidden layer in
  memory; the pooling (one channel) in torch; float32 audio (fp16 / bf16 on CUDA).
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
OP = "audio_squeeze_tokens"
# where avfused.backends sends the op to the extension: the CUDA kernels (run by ext on CUDA tensors) join once
# their GPU tests (tests/ops/test_audio_squeeze_tokens.py, marked gpu) have passed on a GPU; until then models
# on GPUs run its Triton kernels (auto) or the reference
EXT_DEVICES = ("cpu",)


def check_inputs(backend: str, audio: Tensor, weight: Tensor, bias: Tensor, to_one: Tensor, to_one_bias: Tensor,
                 frames: int, token_dim: int) -> None:
    """The op's one validator: named errors before any kernel runs."""
    check_tensors(OP, backend, audio=audio, weight=weight, bias=bias, to_one=to_one, to_one_bias=to_one_bias)
    check_rank(OP, "audio", audio, 3, "(B, C, L)")
    check_non_empty(OP, "audio", audio, "(B, C, L)", "clips")
    channels = audio.shape[1]
    check_rank(OP, "weight", weight, 3, "(C, C, K1)")
    check_shape(OP, "weight", weight, (channels, channels, None), "(C, C, K1)")
    check_shape(OP, "bias", bias, (channels,), "(C,)")
    check_rank(OP, "to_one", to_one, 3, "(1, C, K2)")
    check_shape(OP, "to_one", to_one, (1, channels, None), "(1, C, K2)")
    check_shape(OP, "to_one_bias", to_one_bias, (1,), "(1,)")
    if weight.shape[-1] % 2 != 1 or to_one.shape[-1] % 2 != 1:
        raise InputShapeError(f"{OP}: kernel sizes must be odd ('same' padding), got {weight.shape[-1]} and "
                              f"{to_one.shape[-1]}")
    if frames < 1 or token_dim < 1:
        raise InputShapeError(f"{OP}: frames and token_dim must be >= 1, got {frames} and {token_dim}")


# ---------------------------------------------------------------------------------------------
# triton: the signal before the pooling in one kernel each way; the pooling (one channel) is torch's
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("avfused_triton::audio_squeeze_signal", mutates_args=())
def triton_signal(audio: Tensor, weight: Tensor, bias: Tensor, to_one: Tensor, to_one_bias: Tensor) -> Tensor:
    """audio (B, C, L), weight (3, C, C) tap-major, bias (C,), to_one (K, C) tap-major, to_one_bias (1,);
    contiguous, audio float32 (or fp16 / bf16 on CUDA) -> the signal before the pooling (B, L) float32."""
    from avfused.kernels.audio_squeeze_tokens import launch_signal

    return launch_signal(audio, weight, bias, to_one, to_one_bias)


@triton_signal.register_fake
def _(audio, weight, bias, to_one, to_one_bias):
    return audio.new_empty((audio.shape[0], audio.shape[2]), dtype=torch.float32)


@torch.library.custom_op("avfused_triton::audio_squeeze_signal_backward", mutates_args=())
def triton_signal_backward(grad: Tensor, audio: Tensor, weight: Tensor, bias: Tensor, to_one: Tensor
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of triton_signal for audio, weight, bias and to_one, in one Triton kernel."""
    from avfused.kernels.audio_squeeze_tokens import launch_backward

    return launch_backward(grad, audio, weight, bias, to_one)


@triton_signal_backward.register_fake
def _(grad, audio, weight, bias, to_one):
    return tuple(t.new_empty(t.shape) for t in (audio, weight, bias, to_one))


def _triton_setup_context(ctx, inputs, output) -> None:
    *tensors, to_one_bias = inputs
    ctx.save_for_backward(*tensors)
    ctx.bias_dtype = to_one_bias.dtype


def _triton_autograd(ctx, grad: Tensor):
    grads = triton_signal_backward(grad.contiguous(), *ctx.saved_tensors)
    return (*grads, grad.sum().reshape(1).to(ctx.bias_dtype))


triton_signal.register_autograd(_triton_autograd, setup_context=_triton_setup_context)


def triton(audio: Tensor, weight: Tensor, bias: Tensor, to_one: Tensor, to_one_bias: Tensor, frames: int,
           token_dim: int) -> Tensor:
    """The Triton backend of the op; returns audio's dtype."""
    check_inputs("triton", audio, weight, bias, to_one, to_one_bias, frames, token_dim)
    if weight.shape[-1] != 3:
        raise InputShapeError(f"{OP}: the triton kernel computes the SAAVM's 3-tap convolution; weight has "
                              f"{weight.shape[-1]} taps (the ext and torch backends take any odd count)")
    flat = (audio, weight.permute(2, 0, 1), bias, to_one[0].t(), to_one_bias)
    signal = triton_signal(*(t.contiguous() for t in flat))
    return reference.audio_to_tokens(signal.to(audio.dtype), frames, token_dim)


# ---------------------------------------------------------------------------------------------
# ext: the C++ (and CUDA) extension
# ---------------------------------------------------------------------------------------------
def ext(audio: Tensor, weight: Tensor, bias: Tensor, to_one: Tensor, to_one_bias: Tensor, frames: int,
        token_dim: int) -> Tensor:
    """The extension backend of the op; returns audio's dtype (computed in float32)."""
    check_inputs("ext", audio, weight, bias, to_one, to_one_bias, frames, token_dim)
    activations = ext_activation_dtype(audio)
    weights = (t.float() for t in (weight, bias, to_one, to_one_bias))
    out = torch.ops.avfused_ext.audio_squeeze_tokens(audio.to(activations), *weights, frames, token_dim)
    return out.to(audio.dtype)


def _fake(audio, weight, bias, to_one, to_one_bias, frames, token_dim):
    return audio.new_empty((audio.shape[0], frames, token_dim))


register_autocast("avfused_triton::audio_squeeze_signal", (0,), TRITON_DTYPES)
if EXT_REASONS["cpu"] is None:
    register_trainable_ext(OP, _fake)
    register_autocast("avfused_ext::audio_squeeze_tokens", (0,), EXT_HALF_ON_CUDA)
