"""Every kind of bad input file gives its named error, with the file's path and the reason."""

from __future__ import annotations

import os

import pytest
from test_data_decode import burst_audio, grey_frames

from avfused.data.decode import probe, read_clip
from avfused.data.encode import write_video
from avfused.errors import (
    DataError,
    EmptyMediaError,
    MediaDecodeError,
    MediaNotFoundError,
    MissingStreamError,
    TruncatedMediaError,
)

SPEC = {"frames": 4, "image_size": 16, "seconds": 1.0}


def good_file(path, vcodec="h264", acodec="aac"):
    write_video(path, grey_frames(25), burst_audio(1.0, 16000, 1), video_codec=vcodec, audio_codec=acodec)
    return path


def assert_named(error_type, path, words):
    with pytest.raises(error_type) as info:
        read_clip(path, **SPEC)
    error = info.value
    assert isinstance(error, DataError) and error.path == str(path)
    assert str(path) in str(error) and all(w in error.reason for w in words), error.reason
    return error


def test_missing_path(tmp_path):
    error = assert_named(MediaNotFoundError, tmp_path / "nope.mp4", ["no such file"])
    assert isinstance(error, FileNotFoundError)
    with pytest.raises(MediaNotFoundError):
        probe(tmp_path / "nope.mp4")


def test_symbolic_link_loop_and_dangling_link_are_named(tmp_path):
    """What eval and prepare read through (read_clip, probe): a loop is not "no such file"."""
    loop_a, loop_b, dangling = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "gone.mp4"
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    os.symlink(tmp_path / "nothing.mp4", dangling)
    assert_named(MediaDecodeError, loop_a, ["symbolic link loop"])
    assert_named(MediaNotFoundError, dangling, ["symbolic link to", "nothing.mp4", "does not exist"])
    with pytest.raises(MediaDecodeError, match="symbolic link loop"):
        probe(loop_b)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    assert_named(EmptyMediaError, path, ["empty", "0 bytes"])


def test_unreadable_garbage(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(os.urandom(4096))
    assert_named(MediaDecodeError, path, ["not a readable media container"])


def test_directory_instead_of_file(tmp_path):
    assert_named(MediaDecodeError, tmp_path, ["directory"])


@pytest.mark.parametrize(
    "ext,vcodec,acodec,keep",
    [
        ("mp4", "h264", "aac", 0.8),  # moov atom at the end is lost
        ("mkv", "h264", "aac", 0.6),
        ("webm", "vp9", "opus", 0.5),
        ("avi", "mpeg4", "pcm_s16le", 0.6),
        ("avi", "mpeg4", "pcm_s16le", 0.05),  # cut inside the header
    ],
)
def test_truncated_file(tmp_path, ext, vcodec, acodec, keep):
    data = good_file(tmp_path / f"whole.{ext}", vcodec, acodec).read_bytes()
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: int(len(data) * keep)])
    error = assert_named(TruncatedMediaError, path, [])
    assert isinstance(error, MediaDecodeError)
    assert "truncated" in error.reason or "declares" in error.reason


def test_no_audio_track(tmp_path):
    path = tmp_path / "silent.mp4"
    write_video(path, grey_frames(25), None)
    assert_named(MissingStreamError, path, ["no audio track"])


def test_no_video_track(tmp_path):
    path = tmp_path / "sound.mkv"
    write_video(path, None, burst_audio(1.0, 16000, 2))
    assert_named(MissingStreamError, path, ["no video track"])


def test_window_past_the_end(tmp_path):
    path = good_file(tmp_path / "ok.mp4")
    with pytest.raises(EmptyMediaError, match="no video frame at or after"):
        read_clip(path, start=5.0, **SPEC)
