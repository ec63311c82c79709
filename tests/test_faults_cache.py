"""Cache integrity: a rerun of prepare verifies every shard it would reuse and decodes the damaged ones
again, a fixed bad file is decoded on the rerun, and readers name the damaged shard and the command that
redoes it."""

from __future__ import annotations

import json

import pytest
import torch
from test_data_decode import burst_audio, grey_frames

from avfused.cli import main
from avfused.data.cache import CachedClipDataset, prepare_cache
from avfused.data.datasets import ClipRecord
from avfused.data.decode import ClipSpec
from avfused.data.encode import write_video
from avfused.errors import CacheError

SPEC = ClipSpec(frames=2, image_size=16, seconds=0.5)


def _video(path, shade):
    write_video(path, grey_frames(6, size=24) // shade, burst_audio(0.6, 16000, 1), fps=10, audio_codec="pcm_s16le")


@pytest.fixture
def records(tmp_path):
    out = []
    for i in range(4):
        path = tmp_path / "videos" / f"{i}.mkv"
        path.parent.mkdir(exist_ok=True)
        _video(path, 1 + i)
        out.append(ClipRecord(str(path), i % 2, i % 2, 0, "FVRA" if i % 2 else "RVRA", "m", f"id{i}", split="train"))
    return out


def _prepare(records, out):
    return prepare_cache(records, out, SPEC, shard_size=2, progress=False, command=f"avfused prepare --out {out}")


def _damage(shard, how):
    blob = shard.read_bytes()
    if how == "deleted":
        shard.unlink()
    elif how == "truncated":
        shard.write_bytes(blob[: len(blob) // 2])
    else:  # one flipped byte in the pixels: the file keeps its size and layout
        shard.write_bytes(blob[:-100] + bytes([blob[-100] ^ 0x10]) + blob[-99:])


@pytest.mark.parametrize("how", ["deleted", "truncated", "flipped"])
def test_prepare_verifies_what_it_reuses_and_redoes_damaged_shards(tmp_path, records, how):
    out = tmp_path / "cache"
    _prepare(records, out)
    healthy = [CachedClipDataset(out)[i]["video"] for i in range(4)]
    _damage(out / "shards" / "shard-00001.safetensors", how)
    report = _prepare(records, out)
    assert report.shards_reused == 1 and len(report.redone) == 1 and report.redone[0].startswith("shard-00001")
    again = CachedClipDataset(out)
    assert all((again[i]["video"] == healthy[i]).all() for i in range(4))


@pytest.mark.parametrize("how", ["deleted", "truncated", "flipped"])
def test_readers_name_the_damaged_shard_and_the_fix(tmp_path, records, how):
    out = tmp_path / "cache"
    _prepare(records, out)
    _damage(out / "shards" / "shard-00001.safetensors", how)
    data = CachedClipDataset(out)
    data[0]  # the healthy shard reads
    with pytest.raises(CacheError) as caught:
        data[3]
    message = str(caught.value)
    assert "shard-00001.safetensors" in message and f"`avfused prepare --out {out}` again" in message


def test_a_damaged_shard_read_by_a_loader_worker_is_still_a_named_error(tmp_path, records):
    """torch re-raises a worker's error from its text; it stays a CacheError naming the shard (not a RuntimeError)."""
    out = tmp_path / "cache"
    _prepare(records, out)
    _damage(out / "shards" / "shard-00000.safetensors", "flipped")
    loader = torch.utils.data.DataLoader(CachedClipDataset(out), batch_size=2, num_workers=1)
    with pytest.raises(CacheError) as caught:
        next(iter(loader))
    assert str(caught.value).startswith(str(out / "shards" / "shard-00000.safetensors") + ": row ")
    assert "\n" not in str(caught.value)


def test_a_fixed_bad_file_is_decoded_on_the_rerun(tmp_path, records):
    out = tmp_path / "cache"
    broken = records[1].path
    good = open(broken, "rb").read()
    open(broken, "wb").close()  # empty: skipped
    first = _prepare(records, out)
    assert first.files_skipped == 1 and first.skipped[0]["path"] == broken
    assert _prepare(records, out).files_skipped == 1  # unchanged: still skipped, the shard reused
    open(broken, "wb").write(good)  # fixed
    fixed = _prepare(records, out)
    assert fixed.files_skipped == 0 and fixed.files_cached == 4 and "changed since" in fixed.redone[0]
    assert json.loads((out / "index.json").read_text())["skipped"] == []


def test_the_prepare_command_records_how_to_redo_the_cache(tmp_path, records, capsys):
    """The command line in index.json is the one a reader's error quotes."""
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--identities", "2", "--clips-per-identity", "2", "--size", "32",
                 "--seconds", "0.5", "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    cache = tmp_path / "cache"
    prepare = ["prepare", "--data", str(data), "--out", str(cache), "--preset", "demo", "--seconds", "0.5",
               "--frames", "2", "--image-size", "32", "--workers", "0", "--no-progress"]  # fmt: skip
    assert main(prepare) == 0
    command = json.loads((cache / "index.json").read_text())["prepared_with"]
    assert command.startswith("avfused prepare --data ") and f"--out {cache}" in command
    shard = next((cache / "shards").glob("*.safetensors"))
    _damage(shard, "truncated")
    capsys.readouterr()
    assert main(prepare) == 0
    assert f"decoded again: {shard.stem}" in capsys.readouterr().out
