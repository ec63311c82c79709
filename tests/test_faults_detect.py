"""detect and eval under bad options and odd files: options that cannot work are one error before any file
(exit status 2), not one per file; a symbolic link loop, a 1x2000 video and a file mostly made of padding
are each named as what they are; long scans show progress."""

import os

import numpy as np
import pytest
import torch
from helpers import tiny_config
from test_data_decode import burst_audio, grey_frames

import avfused.backends
import avfused.detect
from avfused import SingleStreamNet
from avfused.checkpoint import save_checkpoint
from avfused.cli import main
from avfused.data.decode import read_clip
from avfused.data.encode import write_video
from avfused.errors import DegenerateFrameError

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = tiny_config(clip_seconds=0.5)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    checkpoint = root / "model.safetensors"
    save_checkpoint(checkpoint, CONFIG, SingleStreamNet(CONFIG).state_dict())
    video = root / "talk.mp4"  # 1 s: two windows
    write_video(video, grey_frames(10, size=32), burst_audio(1.0, 16000, 1), fps=10)
    short = root / "short.mp4"  # 0.2 s of a 0.5 s window
    write_video(short, grey_frames(2, size=32), burst_audio(0.2, 16000, 1), fps=10)
    strip = root / "strip.mkv"  # the 1x2000 video
    write_video(strip, np.full((5, 1, 2000, 3), 128, np.uint8), burst_audio(0.5, 16000, 1), fps=10,
                video_codec="ffv1", audio_codec="pcm_s16le")  # fmt: skip
    return {"checkpoint": checkpoint, "video": video, "short": short, "strip": strip}


def detect(files, *args):
    return main(["detect", str(files["checkpoint"]), *args, "--backend", "torch", "--no-progress"])


def one_error_line(capsys) -> str:
    # the line naming the decision threshold (a note here: the checkpoint has no calibrated one) is no error
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note: threshold")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("options, words", [(["--hop", "0"], "hop"), (["--threshold", "7"], "--threshold 7")])
def test_options_that_cannot_work_are_one_error_before_any_file(files, capsys, options, words):
    assert detect(files, str(files["video"]), str(files["short"]), *options) == 2
    assert words in one_error_line(capsys)


def test_a_forced_backend_that_cannot_run_is_one_error_not_one_per_file(files, capsys, monkeypatch):
    real = avfused.backends.unavailable_reason
    monkeypatch.setattr(
        avfused.backends, "unavailable_reason", lambda name, device=None: "not here" if name == "triton" else real(name)
    )
    args = ["detect", str(files["checkpoint"]), str(files["video"]), str(files["short"]), "--backend", "triton"]
    assert main(args) == 2
    assert "'triton' was forced" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["detect", "eval"])
@pytest.mark.parametrize("device", ["cuda:99", "gpu"])
def test_a_device_that_is_not_here_is_one_error_line(files, capsys, command, device):
    args = [str(files["video"])] if command == "detect" else ["--data", str(files["video"].parent)]
    assert main([command, str(files["checkpoint"]), *args, "--device", device]) == 2
    assert f"--device {device}" in one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: --device cuda is no error")
def test_device_cuda_without_a_gpu_is_one_error_line(files, capsys):
    assert main(["detect", str(files["checkpoint"]), str(files["video"]), "--device", "cuda"]) == 2
    assert "--device cuda" in one_error_line(capsys)


def test_eval_refuses_a_threshold_that_is_not_a_probability(files, capsys):
    assert main(["eval", str(files["checkpoint"]), "--data", str(files["video"].parent), "--threshold", "7"]) == 2
    assert "--threshold 7" in one_error_line(capsys)


def test_symbolic_links_that_lead_nowhere_are_named(files, tmp_path, capsys):
    loop_a, loop_b, dangling = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "gone.mp4"
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    os.symlink(tmp_path / "nothing.mp4", dangling)
    assert detect(files, str(loop_a), str(dangling), str(files["video"])) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "symbolic link loop" in errors[0] and "a.mp4" in errors[0]
    assert "symbolic link to" in errors[1] and "nothing.mp4" in errors[1]
    assert "talk.mp4: " in captured.out  # the good file is still scored


def test_a_one_pixel_high_video_is_refused_not_scored_from_a_pixel(files, capsys):
    with pytest.raises(DegenerateFrameError, match="2000x1"):
        read_clip(files["strip"], frames=2, image_size=16, seconds=0.5)
    assert detect(files, str(files["strip"])) == 1
    line = one_error_line(capsys)
    assert "strip.mkv" in line and "square crop would be 1x1 pixels" in line


def test_the_text_line_says_how_much_of_a_short_file_is_padding(files, capsys):
    assert detect(files, str(files["short"]), str(files["video"])) == 0
    short, whole = capsys.readouterr().out.strip().splitlines()
    assert "short.mp4" in short and "0.30 s of 0.50 s padded" in short and "mostly padding" in short
    assert "talk.mp4" in whole and "padded" not in whole


def test_scanning_a_file_shows_progress_over_its_windows(files, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, *args, **kwargs):
            self.kwargs, self.done = kwargs, 0
            bars.append(self)

        def update(self, n):
            self.done += n

        def close(self):
            pass

    monkeypatch.setattr(avfused.detect, "tqdm", Bar)
    assert main(["detect", str(files["checkpoint"]), str(files["video"]), "--hop", "0.05", "--backend", "torch"]) == 0
    (bar,) = bars
    assert bar.kwargs["unit"] == "window" and not bar.kwargs["disable"] and bar.done == 11  # 0, 0.05, ..., 0.5
