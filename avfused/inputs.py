"""Checks of model inputs, so a bad batch fails at the door with a named error, not deep in a layer.

check_model_inputs(video (B, T, 3, H, W), audio (B, S), config) raises an avfused.errors.InputError.
prepare_model_inputs(video, audio, config, dtype) -> (video, audio): the same checks, then
    dtype   floating-point inputs of another dtype (float64, float16, bfloat16 ...) are cast to ``dtype``
            (the model's); integer or bool tensors are refused (InputDtypeError: divide uint8 frames by 255)
    range   video in [0, 1]: values outside [VIDEO_REFUSED_BELOW, VIDEO_REFUSED_ABOVE] are refused
            (InputRangeError: 0-255 frames, or frames already normalised by a mean and std); values a
            little outside [0, 1] (interpolation overshoot) are scored with an InputRangeWarning
"""

from __future__ import annotations

import warnings

import torch

from avfused.config import ModelConfig
from avfused.errors import (
    EmptyBatchError,
    InputDeviceError,
    InputDtypeError,
    InputRangeError,
    InputRangeWarning,
    InputRankError,
    InputShapeError,
    NonFiniteInputError,
)

# beyond these, a video is not RGB in [0, 1] (0-255 frames reach 255, ImageNet-normalised ones about -2 and 2.6)
VIDEO_REFUSED_BELOW, VIDEO_REFUSED_ABOVE = -0.5, 1.5
VIDEO_TOLERANCE = 1e-3  # float noise of resizing and colour conversion is not worth a warning


def _check_tensor(name: str, value: object, rank: int, layout: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InputDtypeError(f"{name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if value.dim() != rank:
        raise InputRankError(f"{name} must have {rank} dimensions {layout}, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        hint = "; divide uint8 frames by 255" if name == "video" else ""
        raise InputDtypeError(f"{name} must be a floating-point tensor (video in [0, 1]), got {value.dtype}{hint}")
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


def _check_video_range(video: torch.Tensor) -> None:
    low, high = (float(v) for v in torch.aminmax(video.detach()))
    if low >= -VIDEO_TOLERANCE and high <= 1.0 + VIDEO_TOLERANCE:
        return
    span = f"video values span [{low:.4g}, {high:.4g}]"
    if low < VIDEO_REFUSED_BELOW or high > VIDEO_REFUSED_ABOVE:
        raise InputRangeError(
            f"{span}; the model expects RGB in [0, 1]: divide 0-255 frames by 255, and do not normalise them "
            "(the model subtracts the ImageNet mean and divides by its std itself)"
        )
    # one text for every batch, so Python's default filter shows it once, not once per batch
    message = f"video values lie outside [0, 1] by more than {VIDEO_TOLERANCE:g}; clamp them (scored as given)"
    warnings.warn(message, InputRangeWarning, stacklevel=2)


def prepare_model_inputs(
    video: object, audio: object, config: ModelConfig, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """check_model_inputs, the video's value range, then both cast to ``dtype`` (see the module docstring)."""
    check_model_inputs(video, audio, config)
    if not torch.compiler.is_compiling():  # data-dependent, like the finite check
        _check_video_range(video)
    return video.to(dtype), audio.to(dtype)
