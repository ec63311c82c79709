"""prepare_cache / CachedClipDataset: the cache holds what read_clip gives (to quantisation), counts in =
counts out + skipped, bad files are reported with their reason, an interrupted run resumes."""

from __future__ import annotations

import json

import pytest
import torch
from test_data_decode import burst_audio, grey_frames

from avfused.data.cache import CachedClipDataset, prepare_cache
from avfused.data.datasets import ClipRecord
from avfused.data.decode import ClipSpec, read_clip
from avfused.data.encode import write_video
from avfused.errors import CacheError

SPEC = ClipSpec(frames=3, image_size=16, seconds=0.5)


@pytest.fixture
def files(tmp_path):
    records = []
    for i in range(5):
        path = tmp_path / "videos" / f"{i}.mkv"
        path.parent.mkdir(exist_ok=True)
        frames = grey_frames(8, size=24) // (1 + i % 2)  # two looks, so rows differ
        write_video(path, frames, burst_audio(0.8, 22050, 2), fps=10, sample_rate=22050, audio_codec="pcm_s16le")
        records.append(
            ClipRecord(
                str(path),
                i % 2,
                i % 2,
                0,
                "FVRA" if i % 2 else "RVRA",
                "m",
                f"id{i // 2}",
                split="train" if i < 4 else "test",
            )
        )
    empty = tmp_path / "videos" / "empty.mp4"
    empty.write_bytes(b"")
    records.insert(2, ClipRecord(str(empty), 0, 0, 0, "RVRA", "real", "idx", split="train"))
    records.append(ClipRecord(str(tmp_path / "videos" / "gone.mp4"), 1, 0, 1, "RVFA", "m", "idy", split="test"))
    return records


def test_prepare_then_read_back(tmp_path, files):
    report = prepare_cache(files, tmp_path / "cache", SPEC, shard_size=3, progress=False)
    assert (report.files_in, report.files_cached, report.files_skipped, report.clips) == (7, 5, 2, 5)
    assert report.files_in == report.files_cached + report.files_skipped
    reasons = {item["path"].rsplit("/", 1)[1]: (item["error"], item["reason"]) for item in report.skipped}
    assert reasons["empty.mp4"][0] == "EmptyMediaError" and "0 bytes" in reasons["empty.mp4"][1]
    assert reasons["gone.mp4"][0] == "MediaNotFoundError"
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["counts"] == {"files_in": 7, "files_cached": 5, "files_skipped": 2, "clips": 5}

    data = CachedClipDataset(tmp_path / "cache")
    assert len(data) == 5
    good = [r for r in files if r.path.endswith(".mkv")]
    for i, record in enumerate(good):
        item = data[i]
        clip = read_clip(record.path, SPEC)
        assert item["video"].shape == (3, 3, 16, 16) and item["audio"].shape == (8000,)
        assert item["video"].dtype == torch.float32 and item["audio"].dtype == torch.float32
        assert (item["video"] - clip.video).abs().max() <= 0.5 / 255 + 1e-6  # uint8 rounding only
        assert (item["audio"] - clip.audio).abs().max() <= 1.0 / 32767 + 1e-6  # int16 rounding only
        assert item["label"].item() == record.label and item["path"] == record.path
    assert len(CachedClipDataset(tmp_path / "cache", split="test")) == 1
    assert len(CachedClipDataset(tmp_path / "cache", split="train")) == 4


def test_float16_audio(tmp_path, files):
    prepare_cache(files[:2], tmp_path / "c16", SPEC, audio_dtype="float16", progress=False)
    item = CachedClipDataset(tmp_path / "c16")[0]
    clip = read_clip(files[0].path, SPEC)
    assert (item["audio"] - clip.audio).abs().max() <= 1e-3


def test_resume_after_interruption(tmp_path, files):
    out = tmp_path / "cache"
    full = prepare_cache(files, out, SPEC, shard_size=2, progress=False)
    assert full.shards == 4 and full.shards_reused == 0
    reference = [CachedClipDataset(out)[i]["video"] for i in range(5)]
    # an interruption: the last shard's marker is lost and a partial temp file is left behind
    (out / "shards" / "shard-00003.json").unlink()
    (out / "shards" / "shard-00003.safetensors.tmp").write_bytes(b"partial")
    (out / "index.json").unlink()
    resumed = prepare_cache(files, out, SPEC, shard_size=2, progress=False)
    assert resumed.shards_reused == 3 and resumed.clips == full.clips
    assert not list((out / "shards").glob("*.tmp"))
    again = CachedClipDataset(out)
    assert all(torch.equal(again[i]["video"], reference[i]) for i in range(5))
    # other settings into the same folder: refused unless overwritten
    with pytest.raises(CacheError, match="other settings"):
        prepare_cache(files, out, SPEC.replace(frames=2), shard_size=2, progress=False)
    redone = prepare_cache(files, out, SPEC.replace(frames=2), shard_size=2, overwrite=True, progress=False)
    assert redone.shards_reused == 0 and CachedClipDataset(out)[0]["video"].shape[0] == 2


@pytest.mark.slow
def test_worker_processes_give_the_same_cache(tmp_path, files):
    prepare_cache(files, tmp_path / "serial", SPEC, shard_size=3, progress=False)
    prepare_cache(files, tmp_path / "pool", SPEC, shard_size=3, workers=2, progress=False)
    a, b = CachedClipDataset(tmp_path / "serial"), CachedClipDataset(tmp_path / "pool")
    assert len(a) == len(b) == 5
    assert all(
        torch.equal(a[i]["video"], b[i]["video"]) and torch.equal(a[i]["audio"], b[i]["audio"]) for i in range(5)
    )


def test_missing_cache_is_a_named_error(tmp_path):
    with pytest.raises(CacheError, match="index.json"):
        CachedClipDataset(tmp_path)
