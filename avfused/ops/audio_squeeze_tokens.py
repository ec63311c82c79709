"""``audio_squeeze_tokens``: the SAAVM's audio squeeze (Conv1d C -> C + ReLU + Conv1d C -> 1) straight into tokens.

    audio_squeeze_tokens(audio (B, C, L), weight (C, C, K1), bias (C,), to_one (1, C, K2), to_one_bias (1,),
                         frames T, token_dim D) -> (B, T, D)

The same function as ``avfused.reference.audio_squeeze_tokens`` (the folded SAAVM's, avfused.inference: its
batch norm is in weight and bias). One backend:

* ``ext`` -- the op ``avfused_ext::audio_squeeze_tokens`` (csrc/audio_squeeze_tokens/): a C++ CPU forward
  that never writes the (B, C, L) hidden layer, and its backward ``avfused_ext::audio_squeeze_tokens_backward``,
  which recomputes the hidden layer tile by tile (weight sums per thread in double), so the op trains too
  (in training the batch norm's batch statistics come from ``audio_squeeze_stats`` and are folded into
  weight and bias first). CUDA tensors run the reference.
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
OP = "audio_squeeze_tokens"
EXT_DEVICES = ("cpu",)  # where the extension has kernels for this op (CUDA tensors run the reference)


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


def ext(audio: Tensor, weight: Tensor, bias: Tensor, to_one: Tensor, to_one_bias: Tensor, frames: int,
        token_dim: int) -> Tensor:
    """The extension backend of the op; returns audio's dtype (computed in float32)."""
    check_inputs("ext", audio, weight, bias, to_one, to_one_bias, frames, token_dim)
    return trainable_ext(OP, (audio, weight, bias, to_one, to_one_bias), frames, token_dim)


def _fake(audio, weight, bias, to_one, to_one_bias, frames, token_dim):
    return audio.new_empty((audio.shape[0], frames, token_dim))


if EXT_REASONS["cpu"] is None:
    register_trainable_ext(OP, _fake)
