"""The four benchmark loaders on small fake copies of their layouts, the identity split, ClipDataset
and collate_clips (bad files skipped and listed, never zeros)."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
import torch
from test_data_decode import burst_audio, grey_frames

from avfused.data.datasets import (
    ClipDataset,
    ClipRecord,
    collate_clips,
    dfdc_records,
    dftimit_records,
    fakeavceleb_records,
    lavdf_records,
    load_records,
    split_by_identity,
)
from avfused.data.decode import ClipSpec
from avfused.data.encode import write_video
from avfused.errors import MediaDecodeError, MediaNotFoundError, MetadataError

SPEC = ClipSpec(frames=2, image_size=16, seconds=0.5)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "v.mp4"
    write_video(path, grey_frames(10, size=32), burst_audio(1.0, 16000, 1), fps=10)
    return path


def place(video, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(video, path)


FAKEAVCELEB_ROWS = [
    # source, target1, target2, method, category, type, race, gender, path, directory
    [
        "id00076",
        "-",
        "-",
        "real",
        "A",
        "RealVideo-RealAudio",
        "African",
        "men",
        "00109.mp4",
        "FakeAVCeleb/RealVideo-RealAudio/African/men/id00076",
    ],
    [
        "id00076",
        "-",
        "id00166",
        "rtvc",
        "B",
        "RealVideo-FakeAudio",
        "African",
        "men",
        "00109_fake.mp4",
        "FakeAVCeleb/RealVideo-FakeAudio/African/men/id00076",
    ],
    [
        "id00166",
        "id00076",
        "-",
        "faceswap",
        "C",
        "FakeVideo-RealAudio",
        "Asian (East)",
        "women",
        "00010_id0.mp4",
        "FakeAVCeleb/FakeVideo-RealAudio/Asian (East)/women/id00166",
    ],
    [
        "id00200",
        "id00076",
        "id00166",
        "fsgan-wav2lip",
        "D",
        "FakeVideo-FakeAudio",
        "Caucasian",
        "men",
        "0_1.mp4",
        "FakeAVCeleb/FakeVideo-FakeAudio/Caucasian/men/id00200",
    ],
]


def write_fakeavceleb(root, video, header=None, rows=FAKEAVCELEB_ROWS):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "meta_data.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            header or ["source", "target1", "target2", "method", "category", "type", "race", "gender", "path", ""]
        )
        writer.writerows(rows)
    for row in rows:
        place(video, root.joinpath(*row[-1].split("/")[1:], row[-2]))


def test_fakeavceleb(tmp_path, video):
    root = tmp_path / "FakeAVCeleb"
    write_fakeavceleb(root, video)
    records = fakeavceleb_records(root)
    got = [(r.label, r.visual_label, r.audio_label, r.category, r.method, r.identity) for r in records]
    assert got == [
        (0, 0, 0, "RVRA", "real", "id00076"),
        (1, 0, 1, "RVFA", "rtvc", "id00076"),
        (1, 1, 0, "FVRA", "faceswap", "id00166"),
        (1, 1, 1, "FVFA", "fsgan-wav2lip", "id00200"),
    ]
    # the directory column starts with the dataset's folder name: resolved inside the root
    assert all(os.path.isfile(r.path) for r in records)
    assert records[2].extra["race"] == "Asian (East)"


def test_fakeavceleb_missing_column(tmp_path, video):
    root = tmp_path / "bad"
    header = ["source", "target1", "target2", "category", "type", "race", "gender", "path", ""]  # no "method"
    write_fakeavceleb(root, video, header=header, rows=[r[:3] + r[4:] for r in FAKEAVCELEB_ROWS])
    with pytest.raises(MetadataError) as info:
        fakeavceleb_records(root)
    assert "method" in info.value.reason and info.value.path.endswith("meta_data.csv")


def test_fakeavceleb_no_directory_column_and_no_csv(tmp_path, video):
    root = tmp_path / "nodir"
    header = ["source", "target1", "target2", "method", "category", "type", "race", "gender", "path"]
    write_fakeavceleb(root, video, header=header)
    with pytest.raises(MetadataError, match="unnamed trailing column"):
        fakeavceleb_records(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaNotFoundError, match="metadata CSV not found"):
        fakeavceleb_records(tmp_path / "empty")
    with pytest.raises(MediaNotFoundError, match="does not exist"):
        fakeavceleb_records(tmp_path / "nowhere")


def test_dfdc(tmp_path, video):
    part = tmp_path / "dfdc" / "dfdc_train_part_0"
    meta = {
        "aaa.mp4": {"label": "REAL", "split": "train", "original": None},
        "bbb.mp4": {"label": "FAKE", "split": "train", "original": "aaa.mp4"},
        "ccc.mp4": {"label": "FAKE", "split": "train", "original": "ddd.mp4"},
    }
    part.mkdir(parents=True)
    (part / "metadata.json").write_text(json.dumps(meta))
    for name in meta:
        place(video, part / name)
    records = dfdc_records(tmp_path / "dfdc")
    by_name = {r.path.rsplit("/", 1)[1]: r for r in records}
    assert (by_name["aaa.mp4"].label, by_name["aaa.mp4"].audio_label) == (0, 0)
    assert (by_name["bbb.mp4"].label, by_name["bbb.mp4"].visual_label, by_name["bbb.mp4"].audio_label) == (1, 1, -1)
    # a fake is grouped with its original, so the two never land in different splits
    assert by_name["bbb.mp4"].identity == by_name["aaa.mp4"].identity == "aaa.mp4"
    (part / "metadata.json").write_text(json.dumps({"x.mp4": {"split": "train"}}))
    with pytest.raises(MetadataError, match="no label"):
        dfdc_records(tmp_path / "dfdc")


def test_dftimit(tmp_path, video):
    root = tmp_path / "timit"
    for tree, subject, name in [
        ("DeepfakeTIMIT/lower_quality", "fadg0", "sa1-video-fram1.avi"),
        ("DeepfakeTIMIT/higher_quality", "fadg0", "sa1-video-fram1.avi"),
        ("DeepfakeTIMIT/higher_quality", "mcem0", "si1.avi"),
        ("VidTIMIT", "fadg0", "sa1.mp4"),
    ]:
        place(video, root / tree / subject / name)
    records = dftimit_records(root)
    summary = sorted((r.method, r.identity, r.label, r.visual_label, r.audio_label, r.category) for r in records)
    assert summary == [
        ("faceswap-gan-hq", "fadg0", 1, 1, 0, "FVRA"),
        ("faceswap-gan-hq", "mcem0", 1, 1, 0, "FVRA"),
        ("faceswap-gan-lq", "fadg0", 1, 1, 0, "FVRA"),
        ("real", "fadg0", 0, 0, 0, "RVRA"),
    ]
    with pytest.raises(MetadataError, match="lower_quality"):
        dftimit_records(root / "VidTIMIT")


def test_lavdf_and_avdeepfake1m(tmp_path, video):
    root = tmp_path / "lavdf"
    entries = [
        {"file": "train/0.mp4", "split": "train", "fake_periods": [], "modify_video": False, "modify_audio": False},
        {
            "file": "train/1.mp4",
            "split": "train",
            "fake_periods": [[0.6, 0.9]],
            "modify_video": True,
            "modify_audio": False,
            "original": "train/0.mp4",
        },
        {
            "file": "test/2.mp4",
            "split": "test",
            "fake_periods": [[0.1, 0.3]],
            "modify_video": True,
            "modify_audio": True,
            "original": "test/9.mp4",
        },
    ]
    root.mkdir()
    (root / "metadata.json").write_text(json.dumps(entries))
    for e in entries:
        place(video, root / e["file"])
    records = load_records("lavdf", root)
    assert [(r.label, r.visual_label, r.audio_label, r.category, r.split) for r in records] == [
        (0, 0, 0, "RVRA", "train"),
        (1, 1, 0, "FVRA", "train"),
        (1, 1, 1, "FVFA", "test"),
    ]
    # a window that misses the fake period is real, one that overlaps it is fake
    assert records[1].labels_for_window(0.0, 0.5) == (0, 0, 0)
    assert records[1].labels_for_window(0.5, 1.0) == (1, 1, 0)
    assert records[1].identity == records[0].identity == "train/0.mp4"

    av1m = tmp_path / "av1m"
    av1m.mkdir()
    (av1m / "val_metadata.json").write_text(
        json.dumps(
            [
                {
                    "file": "a.mp4",
                    "fake_segments": [[0.2, 0.4]],
                    "modify_type": "audio_modified",
                    "audio_fake_segments": [[0.2, 0.4]],
                    "visual_fake_segments": [],
                }
            ]
        )
    )
    place(video, av1m / "a.mp4")
    (rec,) = load_records("avdeepfake1m", av1m)
    assert (rec.label, rec.visual_label, rec.audio_label, rec.split) == (1, 0, 1, "val")
    assert rec.labels_for_window(0.5, 1.0) == (0, 0, 0) and rec.labels_for_window(0.0, 0.5) == (1, 0, 1)

    (root / "metadata.json").write_text(json.dumps([{"file": "x.mp4", "split": "train"}]))
    with pytest.raises(MetadataError, match="modify_video"):
        lavdf_records(root)


def _records(identities: int, per: int) -> list[ClipRecord]:
    return [
        ClipRecord(f"/v/{i}_{k}.mp4", k % 2, k % 2, 0, "RVRA", "m", f"id{i}")
        for i in range(identities)
        for k in range(per)
    ]


def test_split_by_identity_is_disjoint_and_deterministic():
    records = _records(23, 3)
    splits = split_by_identity(records, (0.7, 0.15, 0.15), seed=4)
    ids = {name: {r.identity for r in rs} for name, rs in splits.items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert sum(len(rs) for rs in splits.values()) == len(records)
    assert all(len(v) >= 1 for v in ids.values())
    again = split_by_identity(records, (0.7, 0.15, 0.15), seed=4)
    assert {k: [r.path for r in v] for k, v in again.items()} == {k: [r.path for r in v] for k, v in splits.items()}
    other = split_by_identity(records, (0.7, 0.15, 0.15), seed=5)
    assert {r.identity for r in other["test"]} != ids["test"]
    # a split the dataset gives itself is kept
    given = _records(4, 2)
    given[0].split = given[1].split = "test"
    kept = split_by_identity(given, seed=0, respect_given=True)
    assert given[0] in kept["test"] and given[1] in kept["test"]


def test_clip_dataset_reads_and_skips_bad_files(tmp_path, video):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    records = [
        ClipRecord(str(video), 1, 1, 0, "FVRA", "faceswap", "a"),
        ClipRecord(str(bad), 0, 0, 0, "RVRA", "real", "b"),
    ]
    item = ClipDataset(records, SPEC)[0]
    assert item["video"].shape == (2, 3, 16, 16) and item["audio"].shape == (8000,)
    assert (item["label"].item(), item["visual_label"].item(), item["audio_label"].item()) == (1, 1, 0)
    assert item["label"].dtype == torch.int64 and item["category"] == "FVRA" and item["method"] == "faceswap"
    with pytest.raises(MediaDecodeError):
        ClipDataset(records, SPEC)[1]
    skipping = ClipDataset(records, SPEC, on_error="skip")
    batch = collate_clips([skipping[0], skipping[1], skipping[0]])
    assert batch["video"].shape == (2, 2, 3, 16, 16) and batch["label"].tolist() == [1, 1]
    assert len(batch["skipped"]) == 1 and str(bad) in batch["skipped"][0]
    loader = torch.utils.data.DataLoader(skipping, batch_size=2, collate_fn=collate_clips)
    sizes = [b["video"].shape[0] if "video" in b else 0 for b in loader]
    assert sizes == [1]


def test_clip_dataset_windows_cover_the_file_and_share_its_path(tmp_path, video):
    """With a hop: windows 0, hop, ... of the 1 s file, each item one window of it; a bad file is one
    skipped item (or, with on_error="raise", an error at construction)."""
    record = ClipRecord(str(video), 1, 1, 0, "FVRA", "faceswap", "a")
    windows = ClipDataset([record], SPEC, hop=0.5)
    assert [start for _, start in windows.windows] == [0.0, 0.5]
    items = [windows[0], windows[1]]
    assert [i["start"] for i in items] == [0.0, 0.5] and {i["path"] for i in items} == {str(video)}
    assert not torch.equal(items[0]["video"], items[1]["video"])  # grey levels rise frame by frame
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    bad_record = ClipRecord(str(bad), 0, 0, 0, "RVRA", "real", "b")
    assert "skipped" in ClipDataset([bad_record], SPEC, on_error="skip", hop=0.5)[0]
    with pytest.raises(MediaDecodeError):
        ClipDataset([bad_record], SPEC, hop=0.5)
