"""Model configuration: one dataclass that fixes every size and switch of SingleStreamNet.

Presets:
    ModelConfig.small()  -- the paper's 0.48M model: widths (8, 16, 32, 64), depths (2, 2, 6, 2),
                            T=10 frames of 224x224, 3 s of 16 kHz audio, 256 sinc filters of 251 taps.
    ModelConfig.large()  -- widths (32, 64, 128, 256), depths (3, 3, 9, 3).
    ModelConfig.demo()   -- a reduced input (4 frames of 96x96, 1 s of audio, 64 sinc filters) so the
                            built-in demo trains on a 2-core CPU in minutes.

Decisions taken where the paper is silent (docs/design.md, section 1); each is a field, so it can be changed:
    * Sinc filters follow SincNet: low cut-off = min_low_hz + |low|, band = min_band_hz + |band|, the
      high cut-off clamped to [min_low_hz, sample_rate / 2], Hamming window, each filter divided by
      2 * band so its centre tap is 1. Initial cut-offs are mel-spaced from 30 Hz.
    * Instance norm of the waveform uses eps=1e-5 and no affine parameters.
    * Token windows: a video map whose side is not a multiple of ``window`` is zero-padded at the
      bottom/right to the next multiple; padded positions are dropped when tokens are scattered back.
    * Audio tokens: the one-channel audio map of length L is average-pooled to T*49 values (one token
      of 49 per frame) and tokens are linearly interpolated back to L, so L need not divide by T.
    * SAAVM residual: tokens + position embedding -> z; out = z + Linear(attention(LayerNorm(z))).
    * "Each with a shortcut" is the residual inside the VPM (two branches) and inside the SAAVM (the
      additions to each modality); the BNs follow those sums.
    * drop_path rises linearly from 0 to ``drop_path`` over the blocks; layer scale starts at 1e-2.
    * Feature-statistics swap (training only, ``feature_swap``): on the last stage's video and audio
      features, with probability ``feature_swap_prob`` per batch, channel mean/std are mixed with a
      random partner's (MixStyle, weight ~ Beta(0.1, 0.1)). Adversarial heads (``style_heads``)
      predict the label from the detached channel statistics: they learn only to measure how much
      the label leaks through content statistics (their loss trains them alone).
    * Mismatch pairing (training only, ``mismatch_pairing``): clip i's visual feature with clip j's
      audio feature (j a random derangement partner) through the clip head, target "fake".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from avfused.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of SingleStreamNet. See the module docstring for the decisions."""

    widths: tuple[int, ...] = (8, 16, 32, 64)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    frames: int = 10
    image_size: int = 224
    sample_rate: int = 16000
    clip_seconds: float = 3.0
    # audio front end
    sinc_filters: int = 256
    sinc_kernel_size: int = 251
    sinc_min_low_hz: float = 50.0
    sinc_min_band_hz: float = 50.0
    preemphasis: float = 0.97
    log_eps: float = 1e-6
    # blocks
    window: int = 7
    mlp_ratio: int = 4
    layer_scale_init: float = 1e-2
    drop_path: float = 0.0
    audio_token_kernel: int = 33
    audio_pool_kernel: int = 31
    # training-only switches (off in eval whatever their value)
    feature_swap: bool = True
    feature_swap_prob: float = 0.5
    feature_swap_alpha: float = 0.1
    style_heads: bool = True
    mismatch_pairing: bool = True
    num_classes: int = field(default=2, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        self.validate()

    # ---- presets ------------------------------------------------------------------------
    @classmethod
    def small(cls, **overrides: object) -> ModelConfig:
        """The paper's 0.48M-parameter model at its default input."""
        return cls(**overrides)

    @classmethod
    def large(cls, **overrides: object) -> ModelConfig:
        """The large model: widths (32, 64, 128, 256), depths (3, 3, 9, 3)."""
        return cls(**{"widths": (32, 64, 128, 256), "depths": (3, 3, 9, 3), **overrides})

    @classmethod
    def demo(cls, **overrides: object) -> ModelConfig:
        """Small widths on a reduced input (4 x 96x96 frames, 1 s audio, 64 sinc filters) for CPU demos."""
        base = {"frames": 4, "image_size": 96, "clip_seconds": 1.0, "sinc_filters": 64, "sinc_kernel_size": 129}
        return cls(**{**base, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: object) -> ModelConfig:
        presets = {"small": cls.small, "large": cls.large, "demo": cls.demo}
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(presets)}")
        return presets[name](**overrides)

    # ---- derived sizes ------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Audio samples per clip (clip_seconds * sample_rate, rounded)."""
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def token_dim(self) -> int:
        return self.window * self.window

    def video_sizes(self) -> list[int]:
        """Side of the video maps at each stage (after the stem for stage 0)."""
        side = _ceil_div(_ceil_div(self.image_size, 2), 2)  # stem conv s2, max-pool s2
        sizes = [side]
        for _ in self.widths[1:]:
            side = _ceil_div(side, 2)
            sizes.append(side)
        return sizes

    def audio_lengths(self) -> list[int]:
        """Length of the audio maps at each stage (after the k7 s4 stem for stage 0)."""
        length = _ceil_div(self.num_samples, 4)
        lengths = [length]
        for _ in self.widths[1:]:
            length = _ceil_div(length, 2)
            lengths.append(length)
        return lengths

    def num_tokens(self, stage: int) -> int:
        """Video plus audio tokens of one SAAVM at ``stage``: T * windows per frame + T."""
        per_side = _ceil_div(self.video_sizes()[stage], self.window)
        return self.frames * per_side * per_side + self.frames

    # ---- checks and (de)serialisation ---------------------------------------------------
    def validate(self) -> None:
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ConfigError(f"widths {self.widths} and depths {self.depths} must be non-empty and of equal length")
        if any(w <= 0 for w in self.widths) or any(d < 0 for d in self.depths):
            raise ConfigError(f"widths must be positive and depths non-negative, got {self.widths}, {self.depths}")
        if self.frames < 1:
            raise ConfigError(f"frames must be >= 1, got {self.frames}")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be >= 8, got {self.image_size}")
        if self.sinc_kernel_size % 2 != 1:
            raise ConfigError(f"sinc_kernel_size must be odd (a linear-phase filter), got {self.sinc_kernel_size}")
        if self.num_samples < self.sinc_kernel_size:
            raise ConfigError(
                f"a clip of {self.num_samples} samples ({self.clip_seconds} s at {self.sample_rate} Hz) is shorter "
                f"than the {self.sinc_kernel_size}-tap sinc filter; use a longer clip_seconds"
            )
        if self.sinc_min_low_hz + self.sinc_min_band_hz >= self.sample_rate / 2:
            raise ConfigError("sinc_min_low_hz + sinc_min_band_hz must stay below the Nyquist frequency")
        if self.audio_lengths()[-1] < 1 or self.num_samples < 4 * self.frames:
            raise ConfigError(f"{self.num_samples} samples are too few for {self.frames} frames")
        if not 0.0 <= self.feature_swap_prob <= 1.0 or not 0.0 <= self.drop_path < 1.0:
            raise ConfigError("feature_swap_prob must lie in [0, 1] and drop_path in [0, 1)")
        if self.window < 1 or self.mlp_ratio < 1:
            raise ConfigError("window and mlp_ratio must be >= 1")
        if not math.isfinite(self.clip_seconds) or self.clip_seconds <= 0:
            raise ConfigError(f"clip_seconds must be positive, got {self.clip_seconds}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["widths"], data["depths"] = list(self.widths), list(self.depths)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes: object) -> ModelConfig:
        return dataclasses.replace(self, **changes)
