"""`avfused synth` then `avfused prepare` from the command line: the default data path end to end."""

from __future__ import annotations

import json

from avfused.cli import build_parser, main
from avfused.data.cache import CachedClipDataset


def test_synth_then_prepare(tmp_path, capsys):
    data, cache = tmp_path / "synthetic", tmp_path / "cache"
    synth = [
        "synth",
        "--out",
        str(data),
        "--identities",
        "3",
        "--clips-per-identity",
        "3",
        "--size",
        "64",
        "--seconds",
        "0.5",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(synth) == 0
    assert "wrote 9 clips of 3 identities" in capsys.readouterr().out
    (data / "RealVideo-RealAudio").rglob("*.mp4").__next__().write_bytes(b"")  # one broken file
    prepare = [
        "prepare",
        "--data",
        str(data),
        "--out",
        str(cache),
        "--preset",
        "demo",
        "--seconds",
        "0.5",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(prepare) == 0
    out = capsys.readouterr().out
    assert "9 files in: 8 cached (8 clips) + 1 skipped" in out and "EmptyMediaError" in out
    skipped = json.loads((cache / "skipped.json").read_text())
    assert len(skipped) == 1 and skipped[0]["error"] == "EmptyMediaError"
    clips = CachedClipDataset(cache)
    assert len(clips) == 8 and clips[0]["video"].shape == (4, 3, 96, 96) and clips[0]["audio"].shape == (8000,)
    splits = {c["record"]["split"] for c in clips.clips}
    assert splits <= {"train", "val", "test"} and len(splits) >= 2
    assert main(prepare) == 0  # resumes: every shard is reused
    assert "(1 reused)" in capsys.readouterr().out


def test_every_option_has_help_and_a_default():
    parser, _ = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("synth", "prepare"):
        for action in subparsers[name]._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            assert not action.required, f"{name} {action.option_strings} has no default"
