"""read_clip / iter_windows on real container files written here: every container and codec the data side
promises, frame picking by timestamp (constant and variable rate), audio alignment and padding.

Each written frame i is a flat grey of level 16 + STEP * i, so the frame a clip picked can be read back
from its pixels; the audio is silence with short 1 kHz bursts at known times, so alignment is measured.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avfused.config import ModelConfig
from avfused.data.decode import ClipSpec, iter_windows, probe, read_clip, window_starts
from avfused.data.encode import write_video

STEP = 7
BURSTS = (0.2, 0.5, 0.8)


def grey_frames(n: int, size: int = 64, height: int | None = None, step: int = STEP) -> np.ndarray:
    levels = 16 + step * np.arange(n)
    assert levels.max() < 256
    frames = np.empty((n, height or size, size, 3), np.uint8)
    frames[:] = levels[:, None, None, None]
    return frames


def burst_audio(seconds: float, rate: int, channels: int, bursts=BURSTS) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    signal = np.zeros_like(t)
    for b in bursts:
        on = (t >= b) & (t < b + 0.02)
        signal[on] = 0.6 * np.sin(2 * np.pi * 1000 * (t[on] - b))
    # only channel 0 carries the bursts: the downmix must average, not pick a channel
    out = np.zeros((channels, t.size), np.float32)
    out[0] = signal
    return out


def frame_index(video: torch.Tensor, step: int = STEP) -> list[int]:
    """(T, 3, H, W) in [0, 1] -> the written frame index of each picked frame."""
    level = video.mean(dim=(1, 2, 3)).numpy() * 255
    return [int(round((v - 16) / step)) for v in level]


def burst_onsets(audio: torch.Tensor, rate: int) -> list[float]:
    """Times (s) where the bursts start: first sample of each loud run."""
    if audio.abs().max() < 0.05:  # no burst in this window
        return []
    loud = (audio.abs() > 0.5 * audio.abs().max()).numpy()
    idx = np.flatnonzero(loud)
    starts = [idx[0]] + [b for a, b in zip(idx[:-1], idx[1:], strict=True) if b - a > 0.05 * rate]
    return [s / rate for s in starts]


CASES = [
    # (extension, video codec, audio codec, sample rate, channels)
    ("mp4", "h264", "aac", 44100, 2),
    ("mkv", "h264", "pcm_s16le", 22050, 1),
    ("mkv", "vp9", "opus", 48000, 2),
    ("webm", "vp9", "opus", 48000, 1),
    ("avi", "h264", "pcm_s16le", 8000, 2),
    ("avi", "mpeg4", "pcm_s16le", 32000, 1),
    ("mp4", "h264", "pcm_f32le", 16000, 1),
]


@pytest.mark.parametrize("ext,vcodec,acodec,rate,channels", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}" for c in CASES])
def test_read_clip_every_container_and_codec(tmp_path, ext, vcodec, acodec, rate, channels):
    fps, n = 25, 25
    path = tmp_path / f"clip.{ext}"
    write_video(
        path,
        grey_frames(n),
        burst_audio(1.0, rate, channels),
        fps=fps,
        sample_rate=rate,
        video_codec=vcodec,
        audio_codec=acodec,
    )
    spec = ClipSpec(frames=5, image_size=32, seconds=1.0)
    clip = read_clip(path, spec)

    assert clip.video.shape == (5, 3, 32, 32) and clip.video.dtype == torch.float32
    assert clip.audio.shape == (16000,) and clip.audio.dtype == torch.float32
    assert 0.0 <= clip.video.min() and clip.video.max() <= 1.0 and clip.audio.abs().max() <= 1.0
    # frame i is the one on screen at (i + 0.5) / 5 s: written index floor(t * fps)
    expected = [math.floor((i + 0.5) / 5 * fps) for i in range(5)]
    assert frame_index(clip.video) == expected
    assert clip.frame_times == pytest.approx([k / fps for k in expected], abs=1e-3)
    assert clip.source_sample_rate == rate and clip.padded_seconds == 0.0 and clip.audio_padded_seconds == 0.0
    onsets = burst_onsets(clip.audio, 16000)
    assert onsets == pytest.approx(list(BURSTS), abs=0.004)
    # one channel of `channels` holds the 0.6 burst: the mono mix is 0.6 / channels
    assert clip.audio.abs().max().item() == pytest.approx(0.6 / channels, rel=0.15)
    info = probe(path)
    assert info.fps == pytest.approx(fps) and info.duration == pytest.approx(1.0, abs=0.05)
    assert (info.sample_rate, info.channels) == (rate, channels)


def test_variable_frame_rate_is_picked_by_timestamp(tmp_path):
    gaps = np.where(np.arange(20) % 3 == 0, 0.09, 0.03)  # irregular frame spacing
    times = np.round(np.concatenate([[0.0], np.cumsum(gaps)[:-1]]), 3)
    path = tmp_path / "vfr.mp4"
    write_video(path, grey_frames(20), burst_audio(1.2, 16000, 1), frame_times=times, sample_rate=16000)
    clip = read_clip(path, frames=6, image_size=32, seconds=1.0)
    instants = (np.arange(6) + 0.5) / 6
    expected = [int(np.searchsorted(times, t, side="right")) - 1 for t in instants]
    assert frame_index(clip.video) == expected
    assert clip.frame_times == pytest.approx(times[expected].tolist(), abs=2e-3)
    assert burst_onsets(clip.audio, 16000) == pytest.approx(list(BURSTS), abs=0.004)


def test_window_start_shifts_frames_and_audio_together(tmp_path):
    fps = 10
    path = tmp_path / "long.mkv"
    bursts = (0.5, 1.3, 2.6)
    write_video(path, grey_frames(30), burst_audio(3.0, 16000, 1, bursts), fps=fps, video_codec="h264")
    clip = read_clip(path, frames=4, image_size=16, seconds=1.0, start=1.0)
    assert frame_index(clip.video) == [math.floor((1.0 + (i + 0.5) / 4) * fps) for i in range(4)]
    assert burst_onsets(clip.audio, 16000) == pytest.approx([0.3], abs=0.004)

    windows = list(iter_windows(path, frames=2, image_size=16, seconds=1.0, hop=0.75))
    assert [w.start for w in windows] == pytest.approx([0.0, 0.75, 1.5, 2.0])
    for w in windows:
        assert w.video.shape == (2, 3, 16, 16) and w.audio.shape == (16000,) and w.padded_seconds == 0.0
        assert frame_index(w.video) == [math.floor((w.start + (i + 0.5) / 2) * fps) for i in range(2)]
        inside = [b - w.start for b in bursts if 0 <= b - w.start < 0.98]
        assert burst_onsets(w.audio, 16000) == pytest.approx(inside, abs=0.004)


def test_window_starts_cover_the_file():
    assert window_starts(10.0, 3.0, 3.0) == [0.0, 3.0, 6.0, 7.0]
    assert window_starts(2.0, 3.0, 1.0) == [0.0]
    assert window_starts(9.0, 3.0, 3.0) == [0.0, 3.0, 6.0]


def test_short_video_is_padded_as_documented(tmp_path):
    fps = 10
    path = tmp_path / "short.mp4"
    write_video(path, grey_frames(6), burst_audio(0.6, 16000, 1, (0.1,)), fps=fps)
    held = read_clip(path, frames=4, image_size=16, seconds=1.2)
    assert held.padded_seconds == pytest.approx(0.6, abs=1e-6)
    # instants 0.15, 0.45, 0.75, 1.05 s: the last two lie past the end and hold frame 5
    assert frame_index(held.video) == [1, 4, 5, 5]
    assert held.audio[int(0.62 * 16000) :].abs().max() == 0.0  # silence after the end, documented
    assert held.audio_padded_seconds == pytest.approx(0.6, abs=0.07)  # AAC pads its last frame a little
    looped = read_clip(path, frames=4, image_size=16, seconds=1.2, pad="loop")
    # loop: instants wrap modulo the 0.6 s of content -> 0.15, 0.45, 0.15, 0.45
    assert frame_index(looped.video) == [1, 4, 1, 4]
    assert burst_onsets(looped.audio, 16000) == pytest.approx([0.1, 0.7], abs=0.004)


def test_other_encoder_30fps_44k_stereo_reads_into_model_shapes(tmp_path):
    # No ffmpeg binary on this machine: PyAV with other settings stands in (mov container, MPEG-4 Part 2
    # video with B-frames, 30000/1001 fps, 640x360 non-square frame, 44.1 kHz stereo AAC at 96 kb/s).
    path = tmp_path / "other.mov"
    n = 45
    frames = grey_frames(n, size=640, height=360, step=5)
    write_video(
        path,
        frames,
        burst_audio(1.5, 44100, 2),
        fps=30000 / 1001,
        sample_rate=44100,
        video_codec="mpeg4",
        audio_codec="aac",
        video_options={"bf": "2", "g": "12", "b": "5M"},
        audio_bit_rate=96000,
    )
    for config in (ModelConfig.demo(), ModelConfig.small()):
        clip = read_clip(path, ClipSpec.from_config(config))
        assert clip.video.shape == (config.frames, 3, config.image_size, config.image_size)
        assert clip.audio.shape == (config.num_samples,)
        fps = 30000 / 1001
        expected = [
            min(math.floor((i + 0.5) * config.clip_seconds / config.frames * fps), n - 1) for i in range(config.frames)
        ]
        assert frame_index(clip.video, step=5) == expected
        inside = [b for b in BURSTS if b < config.clip_seconds]
        assert burst_onsets(clip.audio, 16000)[: len(inside)] == pytest.approx(inside, abs=0.004)
        batch = clip.video[None], clip.audio[None]
        assert batch[0].shape[0] == 1 and torch.isfinite(batch[1]).all()
