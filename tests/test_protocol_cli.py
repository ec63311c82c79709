"""Protocols on the command line: split files in train and eval, k-fold mean ± std, the silence baseline and
the removal of the silence cue, on a tiny synthetic set whose fakes start with digital silence."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config

from avfused.cli import main
from avfused.data.synthetic import generate
from avfused.folds import aggregate_folds
from avfused.protocols import load_split
from avfused.protocols.splits import relative_path
from avfused.training import loop
from avfused.training.data import SilenceCueRemoved

RUN = ["--batch-size", "4", "--epochs", "1", "--max-steps", "2", "--no-progress", "--backend", "torch"]
EVAL = ["--no-progress", "--backend", "torch", "--no-plot"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cue_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cue")
    generate(root, num_identities=6, clips_per_identity=5, seed=3, fps=10.0, size=32, seconds=1.0, silence_cue=True)
    return root


@pytest.fixture(scope="module")
def split_file(cue_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("splits") / "kfold.json"
    assert main(["splits", "--data", str(cue_data), "--protocol", "kfold", "--folds", "3", "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps({k: v for k, v in tiny_config().to_dict().items() if k != "num_classes"}))
    return path


def train_fold(data, split, config, out, fold, *extra):
    """Train 2 steps on ``fold``; return the paths of the clips the Trainer was given, per split."""
    seen = {}

    class Spy(loop.Trainer):
        def __init__(self, model_config, train_config, train_set, val_set, *args, **kwargs):
            seen["train"] = [train_set[i]["path"] for i in range(len(train_set))]
            seen["val"] = [val_set[i]["path"] for i in range(len(val_set))]
            super().__init__(model_config, train_config, train_set, val_set, *args, **kwargs)

    args = ["train", "--data", str(data), "--split", str(split), "--fold", fold, "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "Trainer", Spy)
        assert main(args + ["--model-config", str(config), "--in-memory", "yes", *RUN, *extra]) == 0
    return seen


@pytest.fixture(scope="module")
def fold1_run(cue_data, split_file, model_config, tmp_path_factory):
    """A run on fold1 (not the first fold, so eval must take the fold from the checkpoint)."""
    out = tmp_path_factory.mktemp("fold1")
    return out, train_fold(cue_data, split_file, model_config, out, "fold1")


def identity(path) -> str:
    return Path(path).parent.name  # synthetic layout: <type>/<race>/<gender>/<identity>/<clip>.mp4


def test_train_on_a_fold_uses_exactly_its_files(cue_data, split_file, fold1_run):
    out, seen = fold1_run
    split = load_split(split_file)
    fold = split.fold("fold1")
    used = sorted(relative_path(p, cue_data) for p in seen["train"] + seen["val"])
    assert used == sorted(fold["train"])
    train_ids, val_ids = {identity(p) for p in seen["train"]}, {identity(p) for p in seen["val"]}
    test_ids = {identity(p) for p in fold["test"]}
    assert val_ids and not train_ids & val_ids and not (train_ids | val_ids) & test_ids
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert (data["split_sha256"], data["fold"]) == (split.sha256, "fold1")


def test_eval_on_the_split_prints_the_table_with_its_sha256(cue_data, split_file, fold1_run, capsys):
    out, _ = fold1_run
    split = load_split(split_file)
    capsys.readouterr()
    assert main(["eval", str(out / "best.safetensors"), "--split", str(split_file), *EVAL]) == 0
    printed = capsys.readouterr().out
    assert f"fold fold1 sha256 {split.sha256}" in printed and "category FVRA" in printed
    result = json.loads((out / "eval-test.json").read_text())
    assert (result["split_sha256"], result["fold"]) == (split.sha256, "fold1")
    scored = sorted(relative_path(v["path"], cue_data) for v in result["videos_scored"])
    assert scored == sorted(split.fold("fold1")["test"])


def test_tampered_split_file_is_refused(cue_data, split_file, fold1_run, model_config, tmp_path, capsys):
    data = json.loads(split_file.read_text())
    data["folds"][1]["train"].append(data["folds"][1]["test"].pop())  # a test video moved into training
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    checkpoint = str(fold1_run[0] / "best.safetensors")
    assert main(["eval", checkpoint, "--split", str(tampered), *EVAL]) == 2
    train = ["train", "--data", str(cue_data), "--split", str(tampered), "--out", str(tmp_path / "run")]
    assert main(train + ["--model-config", str(model_config), *RUN]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("does not match its sha256" in line for line in errors)


def test_split_naming_files_the_data_lacks_is_refused(cue_data, split_file, model_config, tmp_path, capsys):
    split = load_split(split_file)
    split.folds[0]["train"].append("RealVideo-RealAudio/elsewhere/id99999/00000.mp4")
    other = split.save(tmp_path / "other.json")  # a valid hash: the content is simply wrong for this data
    train = ["train", "--data", str(cue_data), "--split", str(other), "--out", str(tmp_path / "run")]
    assert main(train + ["--model-config", str(model_config), *RUN]) == 2
    error = capsys.readouterr().err
    assert "1 of the 21 files it names are not in the dataset" in error and "id99999/00000.mp4" in error


def test_checkpoint_is_refused_on_another_split(cue_data, fold1_run, tmp_path, capsys):
    other = tmp_path / "seed1.json"
    assert main(["splits", "--data", str(cue_data), "--folds", "3", "--seed", "1", "--out", str(other)]) == 0
    checkpoint = str(fold1_run[0] / "best.safetensors")
    capsys.readouterr()
    assert main(["eval", checkpoint, "--split", str(other), *EVAL]) == 2
    error = capsys.readouterr().err
    assert "is not the split" in error and "--allow-other-split" in error
    assert main(["eval", checkpoint, "--split", str(other), "--allow-other-split", "--out", str(tmp_path), *EVAL]) == 0
    assert json.loads((tmp_path / "eval-test.json").read_text())["split_sha256"] == load_split(other).sha256


def test_several_checkpoints_give_the_mean_and_std_over_folds(
    cue_data, split_file, model_config, fold1_run, tmp_path, capsys
):
    train_fold(cue_data, split_file, model_config, tmp_path / "fold0", "fold0")
    checkpoints = [str(tmp_path / "fold0" / "best.safetensors"), str(fold1_run[0] / "best.safetensors")]
    capsys.readouterr()
    assert main(["eval", *checkpoints, "--out", str(tmp_path), *EVAL]) == 0
    printed = capsys.readouterr().out
    assert "mean ± std over 2 folds (fold0, fold1)" in printed and "±" in printed
    summary = json.loads((tmp_path / "eval-folds-test.json").read_text())
    aucs = [fold["overall"]["clip"]["auc"] for fold in summary["folds"]]
    assert summary["mean_std"]["overall"]["clip"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert summary["split_sha256"] == [load_split(split_file).sha256]


def baseline_auc(data, out, *extra) -> float:
    args = ["eval", "--baseline", "silence", "--data", str(data), "--subset", "all", "--out", str(out), *EVAL]
    assert main(args + list(extra)) == 0
    return json.loads((out / "baseline-silence-all.json").read_text())["overall"]["clip"]["auc"]


def test_silence_baseline_finds_the_cue(cue_data, tmp_path, capsys):
    assert baseline_auc(cue_data, tmp_path) > 0.95
    printed = capsys.readouterr().out
    assert "category RVFA" in printed and " visual " not in printed  # the clip head only


@pytest.mark.parametrize("mode", ["trim", "jitter"])
def test_removing_the_silence_cue_leaves_the_baseline_at_chance(cue_data, tmp_path, mode):
    assert abs(baseline_auc(cue_data, tmp_path, "--silence-cue", mode) - 0.5) < 0.15


def test_jitter_is_drawn_from_seed_epoch_and_index_in_training_and_from_the_file_in_evaluation():
    audio = torch.cat([torch.zeros(3200), 0.5 * torch.cos(torch.arange(12800) * 0.3)])  # 0.2 s silence, 1 s tone
    items = [{"audio": audio, "path": f"/data/{name}.mp4", "start": 0.0} for name in ("a", "b")]

    def lead(dataset, index, epoch=0):
        dataset.set_epoch(epoch)
        wave = dataset[index]["audio"]
        assert wave.shape == audio.shape
        return int(torch.nonzero(wave)[0])

    training = SilenceCueRemoved(items, "jitter", 16000, seed=7)
    assert lead(training, 0) == lead(SilenceCueRemoved(items, "jitter", 16000, seed=7), 0)
    assert len({lead(training, 0, epoch) for epoch in range(4)}) > 1
    evaluation = SilenceCueRemoved(items, "jitter", 16000, root="/data")
    assert lead(evaluation, 1) == lead(SilenceCueRemoved(items[::-1], "jitter", 16000, root="/data"), 0)
    assert lead(SilenceCueRemoved(items, "trim", 16000), 0) == 0


def test_fold_aggregation_mean_and_std():
    def fold(acc, auc, fvra_auc):
        metrics = {"acc": acc, "auc": auc, "eer": 0.25, "ap": 0.5}
        return {
            "overall": {"clip": metrics},
            "category": {"FVRA": {"clip": {**metrics, "auc": fvra_auc}}},
            "method": {},
        }

    results = [fold(0.5, 0.6, 0.9), fold(0.7, 0.8, math.nan), fold(0.9, 1.0, 0.7)]
    results[1]["category"]["RVFA"] = {"clip": {"acc": 0.4, "auc": 0.3, "eer": 0.5, "ap": 0.2}}
    aggregate = aggregate_folds(results)
    overall = aggregate["overall"]["clip"]
    assert overall["acc"] == {"mean": pytest.approx(0.7), "std": pytest.approx(0.2), "folds": 3}
    assert overall["auc"]["mean"] == pytest.approx(0.8) and overall["auc"]["std"] == pytest.approx(0.2)
    assert overall["eer"] == {"mean": 0.25, "std": 0.0, "folds": 3}
    fvra = aggregate["category"]["FVRA"]["clip"]["auc"]  # undefined in one fold: left out
    assert fvra == {"mean": pytest.approx(0.8), "std": pytest.approx(math.sqrt(0.02)), "folds": 2}
    rvfa = aggregate["category"]["RVFA"]["clip"]["auc"]  # in one fold only: no spread
    assert rvfa["mean"] == 0.3 and math.isnan(rvfa["std"]) and rvfa["folds"] == 1
    assert aggregate["folds"] == 3


def test_split_file_and_the_split_fractions_are_separate_options():
    from avfused.cli import build_parser

    parser, _ = build_parser()
    fractions = ["--split-fractions", "0.8", "0.1", "0.1"]
    args = parser.parse_args(["train", "--split", "s.json", "--fold", "fold2", *fractions])
    assert (args.split, args.fold, args.split_fractions) == ("s.json", "fold2", [0.8, 0.1, 0.1])
    args = parser.parse_args(["eval", "ckpt", "--split", "s.json", "--subset", "val"])
    assert (args.split, args.subset, args.checkpoints) == ("s.json", "val", ["ckpt"])
