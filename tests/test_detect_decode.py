"""Detection's one-pass decoding (avfused.data.windows) against the reference: read_clip, which seeks to a
key frame before every window and decodes it on its own (the path detection took before).

Files are written here: frames are grey levels (frame i at 16 + 2 i) under a fixed noise texture, so a
wrong frame, crop or resize changes the pixels; audio carries 1 kHz bursts at known times. Checked: the
same window tensors, frame times and padding for several containers, hops and both pad modes, face
crops, seeking over long gaps, each frame decoded at most once (unpicked B-frames not at all) and only
picked frames converted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_decode import burst_audio

from avfused.data import windows as windows_module
from avfused.data.decode import ClipSpec, iter_windows, probe, read_clip, window_starts
from avfused.data.encode import write_video
from avfused.data.windows import stream_windows

FPS, FRAMES = 25, 90  # 3.6 s
BURSTS = (0.2, 1.1, 2.5, 3.3)
CONTAINERS = [
    # (extension, video codec, audio codec, sample rate, channels)
    ("mp4", "h264", "aac", 44100, 2),
    ("mkv", "vp9", "opus", 48000, 1),
    ("avi", "mpeg4", "pcm_s16le", 32000, 2),
]
WINDOWS = [
    # (seconds, hop, pad, frames): back to back; overlapping; more picks than frames; looped; longer than the
    # file (one padded window)
    (1.0, None, "hold", 4),
    (0.7, 0.3, "hold", 5),
    (0.7, 0.3, "hold", 30),
    (0.5, 0.4, "loop", 3),
    (5.0, None, "hold", 4),
    (5.0, None, "loop", 4),
]


def textured_frames(n: int, width: int = 48, height: int = 32) -> np.ndarray:
    levels = 16 + (2 * np.arange(n)) % 224
    texture = np.random.default_rng(0).integers(-12, 13, (height, width, 3))
    return np.clip(levels[:, None, None, None] + texture, 0, 255).astype(np.uint8)


def write_file(path, vcodec="h264", acodec="aac", rate=44100, channels=2, frames=FRAMES, gop=12):
    options = {"g": str(gop)} if vcodec == "h264" else None  # key frames every 0.48 s: seeks land near
    audio = burst_audio(frames / FPS, rate, channels, bursts=BURSTS)
    write_video(path, textured_frames(frames), audio, FPS, rate, vcodec, acodec, video_options=options)
    return path


def reference_clips(path, spec: ClipSpec, hop: float | None) -> list:
    """What detection read before: read_clip at each window start, a seek and a decode per window."""
    info = probe(path)
    starts = window_starts(info.duration, spec.seconds, spec.seconds if hop is None else hop, slack=1.0 / info.fps)
    return [read_clip(path, spec, start=start) for start in starts]


def assert_same_clips(expected: list, got: list) -> None:
    assert len(got) == len(expected) > 0
    for want, have in zip(expected, got, strict=True):
        where = f"window at {want.start}"
        assert have.start == want.start, where
        assert np.allclose(have.frame_times, want.frame_times, rtol=0, atol=1e-9), where  # AVI counts frames
        assert torch.equal(have.video, want.video), where
        assert have.audio.shape == want.audio.shape, where
        assert (have.audio - want.audio).abs().max().item() <= 1e-6, where
        assert have.padded_seconds == want.padded_seconds, where
        assert have.audio_padded_seconds == want.audio_padded_seconds, where
        assert (have.source_fps, have.source_sample_rate) == (want.source_fps, want.source_sample_rate), where
        assert have.face_report == want.face_report, where


@pytest.fixture(scope="module", params=CONTAINERS, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CONTAINERS])
def media(request, tmp_path_factory):
    ext, vcodec, acodec, rate, channels = request.param
    return write_file(tmp_path_factory.mktemp("media") / f"clip.{ext}", vcodec, acodec, rate, channels)


@pytest.mark.parametrize("seconds,hop,pad,frames", WINDOWS, ids=[f"{w[0]}s-hop{w[1]}-{w[2]}" for w in WINDOWS])
def test_one_pass_gives_the_windows_of_per_window_seeks(media, seconds, hop, pad, frames):
    spec = ClipSpec(frames=frames, image_size=16, seconds=seconds, pad=pad)
    expected = reference_clips(media, spec, hop)
    assert_same_clips(expected, list(iter_windows(media, spec, hop=hop)))
    if seconds > FRAMES / FPS:  # a short file: one window, padded as documented
        assert len(expected) == 1 and expected[0].padded_seconds > 1.0


def test_face_crops_with_box_smoothing_match(tmp_path):
    from avfused.data.synthetic import ClipJob, render_clip

    job = ClipJob("", 1, 0, "RVRA", None, None, None, None, 0, FPS, 64, 2.0, 16000)
    faces, speech = render_clip(job)
    path = tmp_path / "face.mkv"  # PCM: AAC's noise substitution would differ after the reference's seeks
    write_video(path, faces, speech, FPS, 16000, "h264", "pcm_s16le", video_options={"g": "10"})
    spec = ClipSpec(frames=5, image_size=24, seconds=0.8, faces="auto")
    expected = reference_clips(path, spec, 0.3)
    assert any(clip.face_report.found for clip in expected)  # the detector works on these faces
    assert_same_clips(expected, list(iter_windows(path, spec, hop=0.3)))


def test_aac_speech_matches_reads_that_decode_from_the_start(tmp_path):
    """FFmpeg fills AAC's noise-substituted bands from a random generator, so they decode differently after
    a seek that lands mid-file (this clip's do). Here the only key frame is the first (x264 puts one every
    250 frames), so read_clip's seeks all decode from the start, as the one pass does: the same audio."""
    from avfused.data.synthetic import ClipJob, render_clip

    _, speech = render_clip(ClipJob("", 1, 0, "RVRA", None, None, None, None, 0, FPS, 32, 2.0, 16000))
    path = tmp_path / "speech.mp4"
    write_video(path, textured_frames(50), speech, FPS, 16000, "h264", "aac")  # with {"g": "10"} they differ
    spec = ClipSpec(frames=4, image_size=16, seconds=0.8)
    assert_same_clips(reference_clips(path, spec, 0.3), list(iter_windows(path, spec, hop=0.3)))


class _SeekCounter:
    """A container that counts its seeks and otherwise is the one it wraps."""

    def __init__(self, container) -> None:
        self._container, self.seeks = container, 0

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._container.close()

    def seek(self, *args, **kwargs) -> None:
        self.seeks += 1
        self._container.seek(*args, **kwargs)


def test_far_apart_windows_seek_instead_of_decoding_the_gap(tmp_path, monkeypatch):
    path = write_file(tmp_path / "long.mp4", frames=150)  # 6 s
    opened = []
    real_open = windows_module._open
    monkeypatch.setattr(windows_module, "_open", lambda p: opened.append(_SeekCounter(real_open(p))) or opened[-1])
    spec = ClipSpec(frames=4, image_size=16, seconds=0.4)
    starts = [0.0, 0.2, 2.0, 4.5, 5.6]
    got = list(stream_windows(path, spec, starts, seek_gap=1.0))
    assert opened[0].seeks == 2  # before 2.0 and 4.5; 0.2 overlaps the first window and 5.6 is 0.7 s on
    assert_same_clips([read_clip(path, spec, start=s) for s in starts], got)


@pytest.mark.parametrize("skip", [True, False], ids=["skipping", "every-frame"])
def test_each_frame_is_decoded_once_and_only_picked_frames_are_converted(tmp_path, monkeypatch, skip):
    path = write_file(tmp_path / "clip.mp4")
    decoded, converted = [], []
    real_convert = windows_module._Frame.to_ndarray

    class CountingFrame(windows_module._Frame):
        __slots__ = ()

        def __init__(self, time, frame) -> None:
            decoded.append(time)
            super().__init__(time, frame)

        def to_ndarray(self, format):  # noqa: A002
            if self.rgb is None:
                converted.append(self.time)
            return real_convert(self, format)

    monkeypatch.setattr(windows_module, "_Frame", CountingFrame)
    spec = ClipSpec(frames=4, image_size=16, seconds=0.7)
    info = probe(path)
    starts = window_starts(info.duration, spec.seconds, 0.3, slack=1.0 / info.fps)  # overlapping windows
    clips = list(stream_windows(path, spec, starts, skip_unneeded=skip))
    assert_same_clips([read_clip(path, spec, start=s) for s in starts], clips)
    picked = {round(t, 6) for clip in clips for t in clip.frame_times}
    assert len(set(decoded)) == len(decoded)  # none twice
    if skip:  # x264's B-frames that no window picks are left undecoded
        assert len(picked) < len(decoded) < FRAMES
    else:
        assert len(decoded) == FRAMES
    assert sorted(round(t, 6) for t in converted) == sorted(picked)  # each picked frame once, no other


def test_starts_out_of_order_are_refused(tmp_path):
    from avfused.errors import ConfigError

    with pytest.raises(ConfigError, match="ascending"):
        list(stream_windows(tmp_path / "any.mp4", ClipSpec(), [1.0, 0.0]))
