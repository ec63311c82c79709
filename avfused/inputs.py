"""Checks of model inputs, so a bad batch fails at the door with a named error, not deep in a layer.

check_model_inputs(video (B, T, 3, H, W), audio (B, S), config) raises an avfused.errors.InputError.
"""

from __future__ import annotations

import torch

from avfused.config import ModelConfig
from avfused.errors import (
    EmptyBatchError,
    InputDeviceError,
    InputDtypeError,
    InputRankError,
    InputShapeError,
    NonFiniteInputError,
)


def _check_tensor(name: str, value: object, rank: int, layout: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InputDtypeError(f"{name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if value.dim() != rank:
        raise InputRankError(f"{name} must have {rank} dimensions {layout}, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise InputDtypeError(f"{name} must be a floating-point tensor (video in [0, 1]), got {value.dtype}")
    return value


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or infinite.

    One pass: a sum is finite exactly when every element is (NaN and infinities propagate through it),
    unless finite elements overflow it; only then are the elements checked one by one (half-precision
    inputs are summed in float32 to keep that rare).
    """
    low_precision = tensor.dtype in (torch.float16, torch.bfloat16)
    if bool(torch.isfinite(tensor.sum(dtype=torch.float32 if low_precision else None))):
        return True
    return bool(torch.isfinite(tensor).all())


def check_model_inputs(video: object, audio: object, config: ModelConfig) -> None:
    """Raise a named InputError unless video is (B, T, 3, H, W) and audio (B, S) as ``config`` expects."""
    c = config
    video = _check_tensor("video", video, 5, "(B, T, 3, H, W)")
    audio = _check_tensor("audio", audio, 2, "(B, S)")
    if video.shape[0] == 0 or audio.shape[0] == 0:
        raise EmptyBatchError(f"empty batch: video {tuple(video.shape)}, audio {tuple(audio.shape)}")
    if video.shape[0] != audio.shape[0]:
        raise InputShapeError(f"video has {video.shape[0]} clips but audio has {audio.shape[0]}")
    expected = (c.frames, 3, c.image_size, c.image_size)
    if tuple(video.shape[1:]) != expected:
        raise InputShapeError(
            f"video must be (B, T={c.frames}, 3, {c.image_size}, {c.image_size}) for this config, got "
            f"{tuple(video.shape)}; resample frames/resize images, or build the model with a matching ModelConfig"
        )
    if audio.shape[1] != c.num_samples:
        raise InputShapeError(
            f"audio must have {c.num_samples} samples ({c.clip_seconds} s at {c.sample_rate} Hz), got "
            f"{audio.shape[1]}; crop/pad the waveform or change clip_seconds"
        )
    if video.device != audio.device:
        raise InputDeviceError(f"video is on {video.device} but audio is on {audio.device}")
    # A data-dependent check cannot be traced by torch.compile; compiled graphs skip it.
    if not torch.compiler.is_compiling():
        for name, tensor in (("video", video), ("audio", audio)):
            if not all_finite(tensor):
                raise NonFiniteInputError(f"{name} holds NaN or infinite values")
