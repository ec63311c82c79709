"""Training augmentations of docs/design.md, section 1, applied per clip with a generator of its own.

    jpeg(video (T, 3, H, W) in [0, 1], quality)      every frame JPEG-encoded and decoded (OpenCV)
    time_stretch(audio (S,), rate)                    resampled by linear interpolation to S * rate
                                                      samples (speed change: tempo and pitch together),
                                                      then centre-cropped / zero-padded back to S
    hflip(video)                                      all frames mirrored left-right

``ClipAugmenter(config)(item, rng)`` draws each augmentation's probability and parameter from ``rng``
(a numpy Generator). ``AugmentedDataset`` seeds that generator from (seed, epoch, index) only, so the
same clip gets the same augmentation whatever the process, rank or resume point -- a requirement of
exact resume and of the multi-process equivalence test.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; a probability of 0 switches an augmentation off."""

    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (60, 100)
    stretch_prob: float = 0.5
    stretch_range: tuple[float, float] = (0.8, 1.25)
    flip_prob: float = 0.5

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(jpeg_prob=0.0, stretch_prob=0.0, flip_prob=0.0)


def jpeg(video: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of each frame at ``quality`` (1-100): (T, 3, H, W) float in [0, 1] -> same."""
    frames = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        # OpenCV codes BGR; the channel order does not change the JPEG error pattern's statistics
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(frame), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode a frame of shape {frame.shape}")
        out[i] = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED).reshape(frame.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(video.dtype).div_(255.0)


def time_stretch(audio: torch.Tensor, rate: float) -> torch.Tensor:
    """Play ``audio`` (S,) ``rate`` times longer (rate > 1 slower), keeping S samples (centre crop / zero pad)."""
    length = audio.shape[-1]
    stretched_length = max(int(round(length * rate)), 2)
    stretched = torch.nn.functional.interpolate(
        audio.reshape(1, 1, -1), size=stretched_length, mode="linear", align_corners=True
    ).reshape(-1)
    if stretched_length >= length:
        offset = (stretched_length - length) // 2
        return stretched[offset : offset + length].clone()
    out = torch.zeros_like(audio)
    offset = (length - stretched_length) // 2
    out[offset : offset + stretched_length] = stretched
    return out


def hflip(video: torch.Tensor) -> torch.Tensor:
    return video.flip(-1)


class ClipAugmenter:
    """Augment one dataset item (a dict with 'video' (T, 3, H, W) and 'audio' (S,)) with a given generator."""

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()

    def __call__(self, item: dict, rng: np.random.Generator) -> dict:
        c = self.config
        item = dict(item)
        # draw every number whether or not it is used, so one switch does not shift the others
        use_jpeg, use_stretch, use_flip = rng.random(3) < (c.jpeg_prob, c.stretch_prob, c.flip_prob)
        quality = int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1))
        # log-uniform, so slowing by 1.25 is as likely as speeding up by 1 / 1.25
        rate = float(np.exp(rng.uniform(np.log(c.stretch_range[0]), np.log(c.stretch_range[1]))))
        if use_jpeg:
            item["video"] = jpeg(item["video"], quality)
        if use_flip:
            item["video"] = hflip(item["video"])
        if use_stretch:
            item["audio"] = time_stretch(item["audio"], rate)
        return item


class AugmentedDataset(Dataset):
    """Wrap a dataset of clip dicts; item ``index`` of epoch ``epoch`` is augmented with rng(seed, epoch, index)."""

    def __init__(self, base: Dataset, config: AugmentConfig | None = None, seed: int = 0) -> None:
        self.base, self.augmenter, self.seed, self.epoch = base, ClipAugmenter(config), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):  # e.g. SilenceCueRemoved: its draws also follow the epoch
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        if "skipped" in item:
            return item
        return self.augmenter(item, np.random.default_rng([self.seed, self.epoch, int(index)]))
