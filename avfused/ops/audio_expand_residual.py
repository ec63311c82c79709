"""``audio_expand_residual``: the SAAVM's way back for audio with the batch norm after it folded.

    audio_expand_residual(audio (B, C, L), tokens (B, T, D), weight (C, 1, K), bias (C,), scale (C,))
        -> (B, C, L) = scale * audio + bias + Conv1d(1 -> C, K, 'same')(the tokens interpolated to L)

The same function as ``avfused.reference.audio_expand_residual`` (the folded SAAVM's, avfused.inference, and the
training SAAVM's).
One backend:

* ``ext`` -- the op ``avfused_ext::audio_expand_residual`` (csrc/audio_expand_residual/): a C++ CPU forward,
  one pass over the audio, and its backward ``avfused_ext::audio_expand_residual_backward``, one pass over the
  output gradient in tiles of positions (the interpolated signals, B L values, computed once; the weight,
  bias and scale sums per thread in double), so the op trains too. CUDA tensors run the reference.
"""

from __future__ import annotations

import torch

from avfused.errors import InputShapeError
from avfused.ops._common import (
    EXT_REASONS,
    check_non_empty,
    check_rank,
    check_shape,
    check_tensors,
    register_trainable_ext,
    trainable_ext,
)

Tensor = torch.Tensor
OP = "audio_expand_residual"
EXT_DEVICES = ("cpu",)  # where the extension has kernels for this op (CUDA tensors run the reference)


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


def ext(audio: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    """The extension backend of the op; returns audio's dtype (computed in float32)."""
    check_inputs("ext", audio, tokens, weight, bias, scale)
    return trainable_ext(OP, (audio, tokens, weight, bias, scale))


def _fake(audio, tokens, weight, bias, scale):
    return audio.new_empty(audio.shape)


if EXT_REASONS["cpu"] is None:
    register_trainable_ext(OP, _fake)
