"""The command line end to end on tiny synthetic videos: train 2 steps, eval, detect (with a broken file)."""

import json

import pytest
from helpers import tiny_config

from avfused.cli import build_parser, main
from avfused.data.synthetic import generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, num_identities=5, clips_per_identity=5, seed=3, fps=10.0, size=32, seconds=0.5)
    return root


def test_every_option_has_help():
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("train", "eval", "detect"):
        for action in sub.choices[name]._actions:
            if action.dest != "help":
                assert action.help, f"avfused {name} {action.option_strings or action.dest} has no help"


def test_train_eval_detect_end_to_end(tiny_data, tmp_path, capsys):
    model_config = tmp_path / "tiny.json"
    model_config.write_text(json.dumps({k: v for k, v in tiny_config().to_dict().items() if k != "num_classes"}))
    out = tmp_path / "run"
    status = main(
        ["train", "--out", str(out), "--data", str(tiny_data), "--dataset", "synthetic", "--model-config",
         str(model_config), "--batch-size", "4", "--epochs", "1", "--max-steps", "2", "--no-progress",
         "--backend", "torch"]
    )  # fmt: skip
    assert status == 0
    for name in ("best.safetensors", "last.safetensors", "metrics.csv", "metrics.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(history) == 1 and history[0]["step"] == 2 and "val_clip_auc" in history[0]
    capsys.readouterr()

    assert main(["eval", str(out / "best.safetensors"), "--no-progress", "--backend", "torch"]) == 0
    table = capsys.readouterr().out
    assert "ACC" in table and "AUC" in table and "category FVRA" in table
    result = json.loads((out / "eval-test.json").read_text())
    assert set(result["overall"]) == {"clip", "visual", "audio"}
    assert result["videos"] == len(result["videos_scored"]) > 0
    assert (out / "roc-test.png").stat().st_size > 1000
    # video level: every 0.06 s window of the 0.5 s videos, averaged per video (or the first window only)
    windows = int(table.split(" videos (")[1].split()[0])
    assert result["data"]["windows"] == "all" and windows >= 8 * result["videos"]
    first_only = ["--windows", "first", "--out", str(tmp_path / "first"), "--no-plot"]
    assert main(["eval", str(out / "best.safetensors"), "--no-progress", "--backend", "torch", *first_only]) == 0
    assert f"{result['videos']} videos ({result['videos']} windows, first)" in capsys.readouterr().out
    first = json.loads((tmp_path / "first" / "eval-test.json").read_text())
    assert [v["path"] for v in first["videos_scored"]] == [v["path"] for v in result["videos_scored"]]
    assert [v["clip"] for v in first["videos_scored"]] != [v["clip"] for v in result["videos_scored"]]

    videos = sorted(tiny_data.rglob("*.mp4"))[:2]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    status = main(["detect", str(out / "best.safetensors"), str(videos[0]), str(broken), str(videos[1]), "--json"])
    captured = capsys.readouterr()
    assert status == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.mp4" in errors[0]
    files = json.loads(captured.out)["files"]
    assert [f["path"] for f in files] == [str(videos[0]), str(broken), str(videos[1])]
    assert "error" in files[1] and "error" not in files[0]
    for f in (files[0], files[2]):
        assert set(f["aggregate"]) == {"clip", "visual", "audio"}
        assert all(0.0 <= p <= 1.0 for p in f["aggregate"].values())
        assert len(f["windows"]) >= 2  # 0.5 s videos in 0.06 s windows: sliding windows

    assert main(["detect", str(out / "best.safetensors"), str(videos[0])]) == 0
    assert "clip" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["eval", "detect"])
def test_broken_checkpoint_is_one_clear_line(tmp_path, capsys, command):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    args = [command, str(bad)] + (["video.mp4"] if command == "detect" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.safetensors" in err[0]


def test_every_command_reports_named_errors_in_one_line(tmp_path, capsys):
    """An avfused error from any command is one 'error:' line and exit status 2, not a traceback."""
    assert main(["splits", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and "Traceback" not in err


def test_the_cli_leaves_pyav_logging_off(tmp_path, capsys):
    """A PyAV log level installs a callback that takes the GIL from FFmpeg's decoder threads; it
    deadlocked seeking decodes, so the CLI keeps PyAV's default (None) unless --verbose."""
    import av.logging

    av.logging.set_level(av.logging.WARNING)
    try:
        main(["splits", "--data", str(tmp_path / "missing")])
        assert av.logging.get_level() is None
    finally:
        av.logging.set_level(None)
