"""Audio front end: learnable sinc filterbank on the raw waveform, and the audio stem fed by it.

AudioFrontEnd: wave (B, S) -> log band energies (B, F, S).
AudioStem:     wave (B, S) -> BN(Conv1d(F -> C, k7, s4)(front end)) (B, C, ceil(S / 4)); the fused
               backends compute front end + conv in one op without storing the (B, F, S) tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from avfused import backends, reference
from avfused.config import ModelConfig


def _mel_spaced_cutoffs(count: int, sample_rate: int, min_low_hz: float, min_band_hz: float) -> tuple:
    """SincNet's initialisation: band edges evenly spaced on the mel scale from 30 Hz to Nyquist."""

    def to_mel(hz: float) -> float:
        return 2595 * math.log10(1 + hz / 700)

    top = sample_rate / 2 - (min_low_hz + min_band_hz)
    mels = torch.linspace(to_mel(30.0), to_mel(top), count + 1, dtype=torch.float64)
    edges = 700 * (10 ** (mels / 2595) - 1)
    return (edges[:-1] - min_low_hz).float(), (edges[1:] - edges[:-1] - min_band_hz).clamp_min(0).float()


class AudioFrontEnd(nn.Module):
    """Pre-emphasis, instance norm, learnable sinc band-pass filters, |.|, log, mean removal.

    forward(wave (B, S)) -> (B, F, S). Parameters: ``low_hz`` and ``band_hz`` (F,), in Hz offsets.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        low, band = _mel_spaced_cutoffs(
            self.config.sinc_filters, self.config.sample_rate, self.config.sinc_min_low_hz, self.config.sinc_min_band_hz
        )
        self.low_hz = nn.Parameter(low)
        self.band_hz = nn.Parameter(band)

    def op_kwargs(self) -> dict:
        """The scalar arguments every front-end op takes, from the config."""
        c = self.config
        return dict(
            kernel_size=c.sinc_kernel_size,
            sample_rate=c.sample_rate,
            min_low_hz=c.sinc_min_low_hz,
            min_band_hz=c.sinc_min_band_hz,
            preemphasis=c.preemphasis,
            log_eps=c.log_eps,
        )

    def filters(self) -> torch.Tensor:
        """The current filterbank (F, K)."""
        kw = self.op_kwargs()
        return reference.sinc_filterbank(
            self.low_hz, self.band_hz, kw["kernel_size"], kw["sample_rate"], kw["min_low_hz"], kw["min_band_hz"]
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return reference.audio_frontend(wave, self.low_hz, self.band_hz, **self.op_kwargs())


class AudioStem(nn.Module):
    """AudioFrontEnd followed by Conv1d(F -> C, k7, stride 4, pad 3, no bias) and BatchNorm.

    forward(wave (B, S)) -> (B, C, ceil(S / 4)). ``backend`` picks the implementation of the fused
    front end + conv (see avfused.backends).
    """

    def __init__(self, config: ModelConfig | None = None, channels: int | None = None, backend: str = "auto") -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.backend = backend
        backends.prepare()  # imports and lookups now, not inside a call torch.compile traces
        self.frontend = AudioFrontEnd(self.config)
        out_channels = channels or self.config.widths[0]
        self.weight = nn.Parameter(torch.empty(out_channels, self.config.sinc_filters, reference.STEM_KERNEL))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        op = backends.module_op("audio_frontend_stem", self, wave.device)
        fe = self.frontend
        features = op(wave, fe.low_hz, fe.band_hz, self.weight, **fe.op_kwargs())
        return self.norm(features)
