"""Protocols: FakeAVCeleb metadata quirks, deterministic identity-disjoint splits, the silence cue."""

import csv
import random

import numpy as np
import pytest

from avfused.errors import MediaNotFoundError, MetadataError
from avfused.protocols import (
    load_split,
    make_splits,
    read_fakeavceleb_metadata,
    remove_silence_cue,
    silence_scores,
    type_code,
)
from avfused.protocols.splits import LOTO_TYPES, SplitFileError, relative_path

TYPES = {
    ("RealVideo-RealAudio", "real", "A"),
    ("RealVideo-FakeAudio", "rtvc", "B"),
    ("FakeVideo-RealAudio", "wav2lip", "C"),
    ("FakeVideo-RealAudio", "faceswap", "C"),
    ("FakeVideo-RealAudio", "fsgan", "C"),
    ("FakeVideo-FakeAudio", "wav2lip", "D"),
    ("FakeVideo-FakeAudio", "faceswap-wav2lip", "D"),
    ("FakeVideo-FakeAudio", "fsgan-wav2lip", "D"),
}


def write_metadata(path, identities=12, duplicates=True, seed=0):
    """A FakeAVCeleb-layout meta_data.csv: every type for every identity, plus the known duplicate quirks."""
    rng = random.Random(seed)
    header = ["source", "target1", "target2", "method", "category", "type", "race", "gender", "path", ""]
    rows = []
    for i in range(identities):
        ident = f"id{i:05d}"
        for kind, method, category in sorted(TYPES):
            for n in range(rng.randint(1, 2)):
                folder = f"FakeAVCeleb/{kind}/African/men/{ident}"
                rows.append(
                    [ident, "id99999", "-", method, category, kind, "African", "men", f"{method}_{n}.mp4", folder]
                )
    extra = []
    if duplicates:
        same = rows[3]
        extra.append(list(same))  # identical duplicate: keep one
        real_video = next(r for r in rows if r[5] == "RealVideo-FakeAudio")
        extra.append(real_video[:3] + ["faceswap"] + real_video[4:])  # impossible: RealVideo with faceswap
        fake = next(r for r in rows if r[5] == "FakeVideo-RealAudio" and r[3] == "fsgan")
        extra.append(fake[:3] + ["wav2lip"] + fake[4:])  # two valid readings: dropped
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows + extra)
    return rows, extra


def test_metadata_duplicates_follow_the_documented_rule(tmp_path):
    rows, extra = write_metadata(tmp_path / "meta_data.csv")
    table = read_fakeavceleb_metadata(tmp_path / "meta_data.csv")
    assert table.rows_read == len(rows) + len(extra)
    assert len(table.records) == len(rows) - 1  # the file with two valid readings is dropped
    assert len({r.path for r in table.records}) == len(table.records)
    report = "\n".join(table.report)
    assert "kept" in report and "ignored" in report and "conflicting readings" in report
    first = table.records[0]
    assert "FakeAVCeleb" in first.path and first.path.endswith(".mp4")
    rvfa = next(r for r in table.records if type_code(r) == "RVFA")
    assert (rvfa.label, rvfa.visual_label, rvfa.audio_label) == (1, 0, 1)


def test_missing_column_and_missing_file_are_named_errors(tmp_path):
    (tmp_path / "meta.csv").write_text("source,method,path\nid0,real,a.mp4\n")
    with pytest.raises(MetadataError, match="missing column"):
        read_fakeavceleb_metadata(tmp_path / "meta.csv")
    with pytest.raises(MediaNotFoundError, match="not found"):
        read_fakeavceleb_metadata(tmp_path / "nothing.csv")


@pytest.fixture
def records(tmp_path):
    write_metadata(tmp_path / "meta_data.csv", identities=15, duplicates=False)
    return read_fakeavceleb_metadata(tmp_path / "meta_data.csv").records


def _identities(records, paths):
    by_path = {r.path: r.identity for r in records}
    return {by_path[p] for p in paths}


def test_kfold_is_identity_disjoint_and_covers_every_file_once(records):
    split = make_splits(records, "kfold", seed=3, folds=5)
    tested = [p for fold in split.folds for p in fold["test"]]
    assert sorted(tested) == sorted(r.path for r in records)
    for fold in split.folds:
        assert not _identities(records, fold["train"]) & _identities(records, fold["test"])
        assert len(fold["train"]) + len(fold["test"]) == len(records)
    test_identities = [_identities(records, fold["test"]) for fold in split.folds]
    assert sum(len(s) for s in test_identities) == len(set().union(*test_identities)) == 15


def test_splits_are_deterministic_from_the_seed(records):
    a, b = make_splits(records, "kfold", seed=7), make_splits(list(reversed(records)), "kfold", seed=7)
    assert a.folds == b.folds and a.sha256 == b.sha256
    assert make_splits(records, "kfold", seed=8).folds != a.folds


def test_seventy_thirty_and_leave_one_type_out(records):
    split = make_splits(records, "70-30", seed=1)
    fold = split.folds[0]
    assert len(fold["train"]) + len(fold["test"]) == len(records)
    assert 0.55 < len(fold["train"]) / len(records) < 0.85
    assert not _identities(records, fold["train"]) & _identities(records, fold["test"])
    loto = make_splits(records, "leave-one-type-out", seed=1)
    assert [f["name"] for f in loto.folds] == list(LOTO_TYPES)
    types = {relative_path(r.path, None): type_code(r) for r in records}
    for f in loto.folds:
        assert {types[p] for p in f["test"]} == {f["name"], "RVRA"}
        assert f["name"] not in {types[p] for p in f["train"]}
        assert not _identities(records, f["train"]) & _identities(records, f["test"])
    assert loto.unused == sum(types[p] in ("FVRA-FS", "FVRA-GAN") for p in types)


def test_split_file_round_trip_and_tamper_check(records, tmp_path):
    split = make_splits(records, "kfold", seed=0, dataset="fakeavceleb")
    path = split.save(tmp_path / "split.json")
    loaded = load_split(path)
    assert loaded.sha256 == split.sha256 and loaded.folds == split.folds
    text = path.read_text().replace(split.folds[0]["test"][0], "elsewhere.mp4", 1)
    path.write_text(text)
    with pytest.raises(SplitFileError, match="sha256"):
        load_split(path)


def _auc(scores, labels):
    """Probability that a random fake outscores a random real (ties count half)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    fakes, reals = scores[labels == 1], scores[labels == 0]
    wins = (fakes[:, None] > reals[None, :]).sum() + 0.5 * (fakes[:, None] == reals[None, :]).sum()
    return wins / (len(fakes) * len(reals))


def _speech_like(rng, seconds, sr=16000, lead=0.0):
    t = np.arange(int(seconds * sr)) / sr
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t) ** 2
    wave = envelope * np.sin(2 * np.pi * rng.uniform(100, 220) * t) * rng.uniform(0.2, 0.8)
    wave = wave + 0.01 * rng.standard_normal(len(t))
    return np.concatenate([np.zeros(int(lead * sr)), wave]).astype(np.float32)


def test_silence_baseline_sees_the_cue_and_not_once_removed():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 100)
    waves = [_speech_like(rng, 0.5, lead=rng.uniform(0.15, 0.4) if y else 0.0) for y in labels]
    assert _auc(silence_scores(waves), labels) > 0.97
    trimmed = [remove_silence_cue(w, mode="trim") for w in waves]
    assert abs(_auc(silence_scores(trimmed), labels) - 0.5) < 0.1
    jittered = [remove_silence_cue(w, mode="jitter", rng=rng) for w in waves]
    assert abs(_auc(silence_scores(jittered), labels) - 0.5) < 0.1


def test_splits_command_writes_a_hashed_split_file(tmp_path, capsys):
    from avfused.cli import main

    write_metadata(tmp_path / "meta_data.csv", identities=6)
    out = tmp_path / "split.json"
    assert main(["splits", "--data", str(tmp_path), "--protocol", "kfold", "--folds", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    split = load_split(out)
    assert split.sha256 in printed and "conflicting readings" in printed
    assert len(split.folds) == 3
