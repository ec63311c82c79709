"""detect_file with decoding in a producer thread: the scores of the old per-window reads, errors and short
files as before, the thread stopped and torch's thread count left alone, and threaded H.264 decoding with
seeks that finishes (PyAV's log callback, which the CLI keeps off, once deadlocked it).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from test_detect_decode import write_file

from avfused.checkpoint import save_checkpoint
from avfused.data.decode import ClipSpec, probe, window_starts
from avfused.detect import DetectTimings, _background, detect_file
from avfused.errors import MediaDecodeError
from avfused.model import SingleStreamNet

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SingleStreamNet(tiny_config(clip_seconds=0.4), backend="torch").eval()


def _spec(model) -> ClipSpec:
    return ClipSpec.from_config(model.config)


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "avfused-decode"]


@pytest.mark.parametrize("hop", [None, 0.15])
def test_scores_match_the_per_window_reads(tmp_path, model, hop):
    path = write_file(tmp_path / "clip.mkv", acodec="pcm_s16le", rate=16000)
    old = detect_file(model, path, _spec(model), hop, batch_size=3, decode="seek")
    new = detect_file(model, path, _spec(model), hop, batch_size=3)
    assert old.ok and new.ok and len(new.windows) == len(old.windows) > 5
    for a, b in zip(old.windows, new.windows, strict=True):
        assert (b.start, b.end, b.padded_seconds) == (a.start, a.end, a.padded_seconds)
        assert (b.clip, b.visual, b.audio) == pytest.approx((a.clip, a.visual, a.audio), abs=1e-6)
    assert new.aggregate == pytest.approx(old.aggregate, abs=1e-6)
    t = new.timings
    assert t.wall_s > 0 and t.decode_s > 0 and t.model_s > 0 and t.wait_s >= 0
    assert "timings" not in new.to_dict()  # the JSON the CLI prints is unchanged
    assert not _decode_threads()


def test_short_file_is_one_padded_window_as_before(tmp_path, model):
    path = write_file(tmp_path / "short.mp4", frames=6)  # 0.24 s, shorter than the 0.4 s window
    old = detect_file(model, path, _spec(model), decode="seek")
    new = detect_file(model, path, _spec(model))
    assert len(new.windows) == len(old.windows) == 1
    assert new.windows[0].padded_seconds == old.windows[0].padded_seconds == pytest.approx(0.16)
    assert new.windows[0].clip == pytest.approx(old.windows[0].clip, abs=1e-6)


def test_unreadable_file_gives_the_same_error(tmp_path, model):
    good = write_file(tmp_path / "good.mp4")
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    old = detect_file(model, bad, _spec(model), decode="seek")
    new = detect_file(model, bad, _spec(model))
    assert not old.ok and not new.ok and str(bad) in new.error
    assert new.error.split(":")[1] == old.error.split(":")[1]  # the same kind of failure
    assert new.windows == [] and not _decode_threads()


def test_producer_errors_reach_the_caller_and_an_early_stop_ends_the_thread():
    def failing():
        yield 1
        raise MediaDecodeError("x.mp4", "broken on purpose")

    with pytest.raises(MediaDecodeError, match="broken on purpose"):
        list(_background(failing, 2, DetectTimings()))
    items = _background(lambda: iter(range(1000)), 2, DetectTimings())
    assert next(items) == 0
    items.close()
    assert not _decode_threads()


def test_the_callers_torch_threads_are_left_alone(tmp_path, model):
    path = write_file(tmp_path / "clip.mp4", frames=12)
    torch.set_num_threads(2)
    detect_file(model, path, _spec(model))
    assert torch.get_num_threads() == 2


HANG_CHECK = """
import contextlib, io, json, sys
from avfused.cli import main
checkpoint, video = sys.argv[1:3]
for hop, decode in (("0.5", "seek"), ("12", "stream")):  # a seek per window; a seek inside the one pass
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["detect", checkpoint, video, "--json", "--threads", "1", "--backend", "torch",
                       "--hop", hop, "--decode", decode])
    assert status == 0
    print(len(json.loads(printed.getvalue())["files"][0]["windows"]))
"""


@pytest.mark.slow
def test_threaded_h264_decoding_with_seeks_finishes(tmp_path, model):
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(checkpoint, model.config, model.state_dict())
    # 15 s of H.264: frame threads, seeks to key frames
    video = write_file(tmp_path / "long.mkv", acodec="pcm_s16le", rate=16000, channels=1, frames=375, gop=25)
    command = [sys.executable, "-c", HANG_CHECK, str(checkpoint), str(video)]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("avfused detect hung decoding with threads and seeks")
    assert done.returncode == 0, done.stderr[-2000:]
    duration, seconds = probe(video).duration, model.config.clip_seconds
    expected = [len(window_starts(duration, seconds, hop, slack=1 / 25)) for hop in (0.5, 12.0)]
    assert [int(line) for line in done.stdout.split()] == expected


def test_default_threads_leave_a_core_to_decoding(monkeypatch):
    from avfused import detect
    from avfused.training import threads

    for idle, expected in ((8, 7), (2, 1), (1, 1)):
        monkeypatch.setattr(threads, "idle_cores", lambda idle=idle: idle)
        assert detect.default_threads() == expected


def test_batches_grow_so_the_model_starts_on_the_first_window(tmp_path, model):
    path = write_file(tmp_path / "clip.mp4", frames=50)  # 2 s: windows at 0, 0.1, ... 1.6
    sizes = []
    hook = model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        result = detect_file(model, path, _spec(model), hop=0.1, batch_size=4)
    finally:
        hook.remove()
    assert len(result.windows) == 17 and sizes == [1, 2, 4, 4, 4, 2]
