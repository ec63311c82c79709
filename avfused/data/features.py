"""Turn decoded samples and pictures into the model's input format.

Audio: any sample format and channel count -> float32 (S,) mono in [-1, 1] at the model's rate.
Video: uint8 (T, H, W, 3) RGB -> float32 (T, 3, H, W) in [0, 1], and the square crop + resize used
when no face crop is wanted.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
import torchaudio.functional as taf

_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int64): 2.0**63}


def samples_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer or float samples -> float32 in [-1, 1] (uint8 PCM is offset binary, centred on 128)."""
    if samples.dtype == np.uint8:
        return (samples.astype(np.float32) - 128.0) / 128.0
    if samples.dtype in _INT_SCALE:
        return (samples.astype(np.float64) / _INT_SCALE[samples.dtype]).astype(np.float32)
    return samples.astype(np.float32, copy=False)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(C, S) -> (S,): the mean of the channels (a plain downmix, no channel weighting)."""
    if audio.ndim == 1:
        return audio.astype(np.float32, copy=False)
    return audio.mean(axis=0, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _rate_ratio(orig: int, new: int) -> tuple[int, int]:
    g = np.gcd(orig, new)
    return orig // g, new // g


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """(S,) at ``orig_rate`` -> (S * new_rate / orig_rate,) with torchaudio's windowed-sinc resampler."""
    if orig_rate == new_rate or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    orig, new = _rate_ratio(int(orig_rate), int(new_rate))
    out = taf.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), orig, new)
    return out.numpy()


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad (at the end) a (S,) signal to exactly ``length`` samples."""
    if audio.shape[0] >= length:
        return audio[:length]
    return np.concatenate([audio, np.zeros(length - audio.shape[0], dtype=audio.dtype)])


def center_square(image: np.ndarray) -> tuple[int, int, int, int]:
    """The largest centred square of an (H, W, 3) image as a box (x0, y0, x1, y1)."""
    h, w = image.shape[:2]
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return x0, y0, x0 + side, y0 + side


def crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop ``box`` (x0, y0, x1, y1; may reach outside the image, the outside is edge-replicated) and
    resize to (size, size, 3) with area interpolation when shrinking."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    crop = image[y0:y1, x0:x1]
    if crop.shape[0] == size and crop.shape[1] == size:
        return np.ascontiguousarray(crop)
    shrinking = crop.shape[0] > size or crop.shape[1] > size
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) RGB -> float32 (T, 3, H, W) in [0, 1]."""
    # numpy, not torch: one small conversion per clip must not wait on torch's intra-op thread pool
    planar = np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32)
    planar *= np.float32(1.0 / 255.0)
    return torch.from_numpy(planar)


def audio_to_tensor(audio: np.ndarray) -> torch.Tensor:
    """float (S,) -> float32 (S,) clipped to [-1, 1] (codecs can overshoot full scale slightly)."""
    return torch.from_numpy(np.clip(audio, -1.0, 1.0).astype(np.float32))
