"""The calibrated decision: training picks the threshold of maximal smoothed balanced accuracy on the validation videos
and stores it in the checkpoint; detect uses it by default (--threshold overrides, old checkpoints fall back
to 0.5 with a note); eval reports ACC at it beside ACC@0.5."""

import json

import numpy as np
import pytest
from helpers import tiny_config

from avfused import SingleStreamNet
from avfused.calibration import calibrate, choose_threshold, decision_threshold
from avfused.checkpoint import load_checkpoint, save_checkpoint
from avfused.cli import main
from avfused.data.encode import write_video
from avfused.evaluate import Predictions, format_table, predict, report, video_level
from avfused.folds import aggregate_folds, format_mean_std_table
from avfused.training.loop import BEST, TrainConfig, Trainer
from avfused.training.toy import ToyClips

pytestmark = pytest.mark.usefixtures("one_thread")


def balanced_accuracy(labels, scores, threshold):
    """Oracle: the mean of the recall on reals and on fakes with score >= threshold called fake."""
    labels, fake = np.asarray(labels), np.asarray(scores) >= threshold
    return (np.mean(~fake[labels == 0]) + np.mean(fake[labels == 1])) / 2


def raw_best_threshold(labels, scores):
    """Oracle of the unsmoothed rule: the midpoint between adjacent distinct scores of maximal balanced accuracy."""
    distinct = np.unique(scores)
    candidates = np.r_[distinct[0], (distinct[1:] + distinct[:-1]) / 2, np.nextafter(distinct[-1], np.inf)]
    accuracy = np.array([balanced_accuracy(labels, scores, t) for t in candidates])
    best = np.flatnonzero(accuracy >= accuracy.max() - 1e-12)
    return candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]]


def normal_logits(rng, count, fake_share, separation, shift=0.0):
    """(labels, scores): logits of N(+-separation / 2 + shift, 1) for fakes / reals, through a sigmoid."""
    labels = (rng.random(count) < fake_share).astype(int)
    logits = np.where(labels == 1, separation / 2, -separation / 2) + shift + rng.standard_normal(count)
    return labels, 1 / (1 + np.exp(-logits))


def test_balanced_accuracy_not_plain_accuracy_picks_the_threshold():
    """80 % fakes: balanced accuracy's optimum stays midway between the classes (logit `shift`), where plain
    accuracy's moves ln(4) / 3 = 0.46 towards the reals."""
    labels, scores = normal_logits(np.random.default_rng(0), 8000, 0.8, separation=3.0, shift=0.7)
    threshold, balanced = choose_threshold(labels, scores)
    assert np.log(threshold / (1 - threshold)) == pytest.approx(0.7, abs=0.12)
    assert balanced == pytest.approx(balanced_accuracy(labels, scores, threshold), abs=1e-12)


def test_ties_go_to_the_threshold_nearest_one_half():
    # symmetric about 0.5 in logit space: every cut between the classes is as good; 0.5 is among them
    assert choose_threshold([0, 0, 1, 1], [0.2, 0.2, 0.8, 0.8]) == (0.5, 1.0)
    assert choose_threshold([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == (0.5, 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_the_reported_balanced_accuracy_is_the_one_at_the_threshold(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(60) < 0.8).astype(int)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(2)  # ties and exact 0 / 1 on purpose
    threshold, balanced = choose_threshold(labels, scores)
    assert 0.0 < threshold < 1.0
    assert balanced == pytest.approx(balanced_accuracy(labels, scores, threshold), abs=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.6])
def test_smoothing_beats_the_raw_maximum_on_a_small_validation_split(shift):
    """104 validation videos, the threshold judged on 3000 new ones from the same classes (optimum at 0.5, or
    moved by a logit shift): over 120 draws the smoothed rule's mean balanced accuracy beats the raw maximum's."""
    rng = np.random.default_rng(1)
    smoothed, raw = [], []
    for _ in range(120):
        labels, scores = normal_logits(rng, 104, 0.5, 3.0, shift)
        test_labels, test_scores = normal_logits(rng, 3000, 0.5, 3.0, shift)
        smoothed.append(balanced_accuracy(test_labels, test_scores, choose_threshold(labels, scores)[0]))
        raw.append(balanced_accuracy(test_labels, test_scores, raw_best_threshold(labels, scores)))
    assert np.mean(smoothed) > np.mean(raw) + 1e-3


def test_choose_threshold_names_what_it_needs():
    with pytest.raises(ValueError, match="real and fake"):
        choose_threshold([1, 1], [0.2, 0.9])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        choose_threshold([0, 1], [-3.0, 2.0])


def _predictions(labels, scores, visual_labels=None):
    n = len(labels)
    return Predictions(
        path=[f"v{i}.mp4" for i in range(n)],
        category=["RVRA" if y == 0 else "FVFA" for y in labels],
        method=["real" if y == 0 else "swap" for y in labels],
        label=np.array(labels),
        visual_label=np.array(visual_labels if visual_labels is not None else labels),
        audio_label=np.full(n, -1),
        scores={head: np.array(scores, dtype=float) for head in ("clip", "visual", "audio")},
    )


def test_calibrate_skips_heads_without_both_classes():
    calibration = calibrate(_predictions([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9], [0, 0, 0, -1]), epoch=3, step=30)
    assert set(calibration["thresholds"]) == {"clip"}  # visual: one class; audio: labels unknown
    assert calibration["epoch"] == 3 and calibration["step"] == 30 and calibration["videos"] == 4
    assert calibrate(_predictions([1, 1], [0.2, 0.7]), epoch=1, step=1) is None


def test_report_gives_acc_at_the_calibrated_threshold_beside_the_fixed_one():
    labels, scores = [0, 0, 0, 1, 1, 1], [0.1, 0.55, 0.6, 0.65, 0.8, 0.9]
    result = report(_predictions(labels, scores), calibrated={"clip": 0.625})
    clip = result["overall"]["clip"]
    assert clip["acc"] == pytest.approx(4 / 6) and clip["acc_cal"] == 1.0
    assert result["calibrated_thresholds"] == {"clip": 0.625}
    assert "acc_cal" not in result["overall"]["visual"]
    header = format_table(result).splitlines()[0]
    assert "ACC@0.5" in header and "ACC@cal" in header
    assert "ACC@cal" not in format_table(report(_predictions(labels, scores))).splitlines()[0]


def test_training_stores_the_validation_threshold_in_the_checkpoint(tmp_path):
    config = tiny_config()
    train_config = TrainConfig(epochs=1, batch_size=4, progress=False, seed=5)
    val_set = ToyClips(config, 8, seed=1)
    trainer = Trainer(config, train_config, ToyClips(config, 8, seed=0), val_set, tmp_path, backend="torch")
    trainer.fit()
    checkpoint = load_checkpoint(tmp_path / BEST)
    calibration = checkpoint.calibration
    assert calibration["videos"] == len(val_set) and calibration["epoch"] == 1
    # the stored threshold is the best one for the validation scores of exactly these weights
    model = SingleStreamNet.from_checkpoint(tmp_path / BEST, backend="torch")
    scores = video_level(predict(model, val_set, progress=False))
    for head, label in (("clip", scores.label), ("visual", scores.visual_label), ("audio", scores.audio_label)):
        threshold = calibration["thresholds"][head]
        assert threshold == pytest.approx(choose_threshold(label, scores.scores[head])[0], abs=1e-4), head
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert history[0]["val_clip_threshold"] == calibration["thresholds"]["clip"]
    decision = decision_threshold(tmp_path / BEST)
    assert decision.calibrated and decision.threshold == calibration["thresholds"]["clip"]


def test_a_checkpoint_without_a_threshold_falls_back_to_one_half(tmp_path):
    config = tiny_config()
    save_checkpoint(tmp_path / "old.safetensors", config, SingleStreamNet(config).state_dict())
    decision = decision_threshold(tmp_path / "old.safetensors")
    assert decision.threshold == 0.5 and not decision.calibrated
    assert "no calibrated threshold" in decision.source


# ---- detect on a file ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video_and_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(5, 32, 32, 3), dtype=np.uint8)
    path = root / "clip.mp4"
    write_video(path, frames, (rng.standard_normal(8000) * 0.1).astype(np.float32), fps=10.0)
    config = tiny_config()
    return path, config, SingleStreamNet(config).state_dict(), root


def _detect(checkpoint, video, capsys, *extra):
    assert main(["detect", str(checkpoint), str(video), "--json", "--backend", "torch", *extra]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_detect_decides_at_the_checkpoints_threshold_unless_told_otherwise(video_and_weights, capsys):
    video, config, weights, root = video_and_weights
    old = root / "old.safetensors"
    save_checkpoint(old, config, weights)
    document, err = _detect(old, video, capsys)
    score = document["files"][0]["aggregate"]["clip"]
    assert document["threshold"] == 0.5 and "note:" in err and "no calibrated threshold" in err

    for offset, verdict in ((-1e-3, "FAKE"), (1e-3, "real")):
        path = root / f"calibrated{offset}.safetensors"
        calibration = {"rule": "test", "epoch": 1, "step": 1, "thresholds": {"clip": score + offset}}
        save_checkpoint(path, config, weights, calibration=calibration)
        document, err = _detect(path, video, capsys)
        assert document["threshold"] == pytest.approx(score + offset) and "note:" not in err
        assert main(["detect", str(path), str(video), "--backend", "torch"]) == 0
        captured = capsys.readouterr()
        assert captured.err.startswith(f"threshold {score + offset:.4f}: calibrated in training")
        (line,) = captured.out.splitlines()  # one line per file
        assert f": {verdict} " in line
    document, _ = _detect(path, video, capsys, "--threshold", "0.0")  # the override wins
    assert document["threshold"] == 0.0 and document["threshold_source"] == "given with --threshold"


def test_fold_means_carry_acc_at_the_calibrated_threshold():
    folds = [report(_predictions([0, 0, 1, 1], scores), calibrated={"clip": 0.35}) for scores in
             ([0.1, 0.4, 0.3, 0.9], [0.1, 0.2, 0.6, 0.9])]  # fmt: skip
    aggregate = aggregate_folds(folds)
    assert aggregate["overall"]["clip"]["acc_cal"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert "ACC@CAL" in format_mean_std_table(aggregate).splitlines()[0]
