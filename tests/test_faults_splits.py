"""Splits and evaluation under bad input: a split whose parts share files or identities is refused (or
accepted by --allow-split-leak, and recorded), unreadable test files are refused (or skipped and listed
by --skip-unreadable), a malformed split file is one error line."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import tiny_config

from avfused import SingleStreamNet
from avfused.checkpoint import save_checkpoint
from avfused.cli import main
from avfused.data.synthetic import generate
from avfused.protocols import load_split

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate(root, num_identities=4, clips_per_identity=3, seed=3, fps=10.0, size=32, seconds=0.5, workers=0,
             progress=False)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "untrained.safetensors"
    save_checkpoint(path, tiny_config(), SingleStreamNet(tiny_config()).state_dict())
    return path


@pytest.fixture(scope="module")
def split_file(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("splits") / "70-30.json"
    assert main(["splits", "--data", str(data), "--protocol", "70-30", "--out", str(path)]) == 0
    return path


def identity(name: str) -> str:
    return Path(name).parent.name  # synthetic layout: <type>/<race>/<gender>/<identity>/<clip>.mp4


def leaky(split_file: Path, out: Path, kind: str) -> Path:
    """The split with a test file also in train ("file"), or one of a training identity's files moved to
    test ("identity"); saved with a new, valid sha256 (the hash only proves the file is intact)."""
    split = load_split(split_file)
    fold = split.folds[0]
    if kind == "file":
        fold["train"].append(fold["test"][0])
    else:
        moved = fold["train"].pop(0)
        assert any(identity(n) == identity(moved) for n in fold["train"])
        fold["test"].append(moved)
    split.save(out)
    load_split(out)  # intact
    return out


def evaluate(checkpoint, data, split, out, *extra):
    return main(["eval", str(checkpoint), "--data", str(data), "--dataset", "synthetic", "--split", str(split),
                 "--allow-other-split", "--out", str(out), "--no-progress", "--backend", "torch", "--no-plot",
                 "--windows", "first", *extra])  # fmt: skip


@pytest.mark.parametrize("kind", ["file", "identity"])
def test_eval_refuses_a_split_whose_parts_share_files_or_identities(checkpoint, data, split_file, tmp_path, capsys,
                                                                    kind):  # fmt: skip
    split = leaky(split_file, tmp_path / "leaky.json", kind)
    assert evaluate(checkpoint, data, split, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "share" in err[0] and "--allow-split-leak" in err[0] and "leaky.json" in err[0]
    assert not (tmp_path / "eval-test.json").exists()


def test_an_accepted_leak_is_recorded_in_the_results(checkpoint, data, split_file, tmp_path, capsys):
    split = leaky(split_file, tmp_path / "leaky.json", "file")
    assert evaluate(checkpoint, data, split, tmp_path, "--allow-split-leak") == 0
    assert "the split leaks" in capsys.readouterr().out
    result = json.loads((tmp_path / "eval-test.json").read_text())
    assert result["data"]["allow_split_leak"] is True
    shared = load_split(split).folds[0]["test"][0]
    assert [Path(f).as_posix().endswith(shared) for f in result["split_leak"]["files"]] == [True]


def test_train_refuses_a_leaky_split_before_training(data, split_file, tmp_path, capsys):
    split = leaky(split_file, tmp_path / "leaky.json", "identity")
    args = ["train", "--data", str(data), "--dataset", "synthetic", "--split", str(split), "--out", str(tmp_path / "r")]
    assert main([*args, "--no-progress"]) == 2
    assert "--allow-split-leak" in capsys.readouterr().err
    assert not (tmp_path / "r" / "last.safetensors").exists()


def test_eval_refuses_unreadable_test_files_unless_told_to_skip_and_list_them(checkpoint, data, split_file, tmp_path,
                                                                              capsys):  # fmt: skip
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    missing = load_split(split_file).folds[0]["test"][0]
    (copy / missing).unlink()
    assert evaluate(checkpoint, copy, split_file, tmp_path) == 2
    err = capsys.readouterr().err
    assert "could not be read" in err and missing in err and "--skip-unreadable" in err
    assert evaluate(checkpoint, copy, split_file, tmp_path, "--skip-unreadable") == 0
    assert "1 clip(s) could not be read" in capsys.readouterr().out
    result = json.loads((tmp_path / "eval-test.json").read_text())
    assert len(result["skipped"]) == 1 and missing in result["skipped"][0]
    assert missing not in {Path(v["path"]).relative_to(copy).as_posix() for v in result["videos_scored"]}


def malformed(split_file: Path, kind: str) -> str:
    content = json.loads(split_file.read_text())
    if kind == "a list":
        return "[1, 2]"
    if kind == "no protocol":
        del content["protocol"]
    else:  # a fold whose train list is a string
        content["folds"][0]["train"] = "all"
    return json.dumps(content)


@pytest.mark.parametrize(
    "kind, words",
    [("a list", "JSON object, this one is a list"), ("no protocol", "'protocol' must be a str, it is missing"),
     ("a bad fold", "fold 0 is not")],
)  # fmt: skip
def test_a_malformed_split_file_is_one_error_line(checkpoint, data, split_file, tmp_path, capsys, kind, words):
    bad = tmp_path / "bad.json"
    bad.write_text(malformed(split_file, kind))
    assert evaluate(checkpoint, data, bad, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.json" in err[0] and words in err[0]
