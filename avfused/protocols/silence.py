"""The leading-silence shortcut: measure it, score clips by it alone, and remove it.

Fake clips of FakeAVCeleb and AV-Deepfake1M are reported to start with a short silence that alone nearly
separates the classes. ``silence_scores`` is the trivial baseline (score = leading silence in seconds);
``remove_silence_cue`` trims leading and trailing silence (mode "trim") or shifts the window by a random
offset (mode "jitter") so a detector cannot learn the cue.

Silence: 10 ms frames whose RMS is below ``threshold_db`` relative to the clip's loudest frame.
Waves are 1-D (S,) float arrays or tensors.
"""

from __future__ import annotations

import numpy as np

FRAME_SECONDS = 0.010


def _frame_levels_db(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level of each 10 ms frame in dB relative to the loudest frame (0 dB); silence -> -inf."""
    frame = max(1, int(round(FRAME_SECONDS * sample_rate)))
    count = len(wave) // frame
    if count == 0:
        return np.zeros(0)
    rms = np.sqrt(np.mean(wave[: count * frame].reshape(count, frame).astype(np.float64) ** 2, axis=1))
    peak = rms.max()
    if peak == 0:
        return np.full(count, -np.inf)
    with np.errstate(divide="ignore"):
        return 20 * np.log10(rms / peak)


def _as_numpy(wave) -> np.ndarray:
    return wave.detach().cpu().numpy() if hasattr(wave, "detach") else np.asarray(wave)


def leading_silence_seconds(wave, sample_rate: int = 16000, threshold_db: float = -40.0) -> float:
    """Seconds of silence before the first frame louder than ``threshold_db`` (the whole clip when silent)."""
    levels = _frame_levels_db(_as_numpy(wave), sample_rate)
    loud = np.flatnonzero(levels > threshold_db)
    first = int(loud[0]) if len(loud) else len(levels)
    return first * FRAME_SECONDS


def silence_scores(waves, sample_rate: int = 16000, threshold_db: float = -40.0) -> np.ndarray:
    """The silence baseline: one score per clip, its leading silence in seconds (higher = more likely fake)."""
    return np.array([leading_silence_seconds(w, sample_rate, threshold_db) for w in waves])


def remove_silence_cue(
    wave,
    sample_rate: int = 16000,
    mode: str = "trim",
    threshold_db: float = -40.0,
    rng: np.random.Generator | None = None,
    max_jitter_seconds: float = 0.5,
):
    """Return the wave without the cue, same type as given.

    trim: drop leading and trailing silent frames (length changes; callers crop/pad to their window).
    jitter: trim, then start every clip with 0..max_jitter_seconds of silence drawn at random, so the
    leading silence no longer depends on the class.
    """
    if mode not in ("trim", "jitter"):
        raise ValueError(f"unknown silence-cue mode {mode!r}; expected 'trim' or 'jitter'")
    array = _as_numpy(wave)
    levels = _frame_levels_db(array, sample_rate)
    loud = np.flatnonzero(levels > threshold_db)
    result = array
    if len(loud):
        frame = max(1, int(round(FRAME_SECONDS * sample_rate)))
        result = array[loud[0] * frame : (loud[-1] + 1) * frame]
    if mode == "jitter":
        rng = rng or np.random.default_rng()
        lead = int(rng.uniform(0, max_jitter_seconds) * sample_rate)
        result = np.concatenate([np.zeros(lead, dtype=array.dtype), result])
    if hasattr(wave, "detach"):
        import torch

        return torch.as_tensor(np.ascontiguousarray(result), dtype=wave.dtype, device=wave.device)
    return result
