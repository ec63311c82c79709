"""A cache of fixed-size clips in shards, for fast training: decode each video once.

``prepare_cache(records, out_dir, spec)`` decodes every record (``workers`` processes) into
    out_dir/cache.json                  what the cache is: the clip spec, audio dtype, shard size and a
                                        fingerprint of the records (a resumed run must match it)
    out_dir/shards/shard-NNNNN.safetensors   video uint8 (n, T, 3, H, W), audio int16 or float16 (n, S)
    out_dir/shards/shard-NNNNN.json     the n clips' records, window starts, labels and each row's
                                        checksum; the shard file's size and sha256; the files of this
                                        shard that were skipped, why, and their size and mtime then.
                                        Written last, atomically: its presence marks the shard done,
                                        so an interrupted run resumes at the first shard without it.
    out_dir/index.json                  every clip (shard, row, labels, checksum ...), every shard's
                                        size and sha256, every skipped file with its error and reason,
                                        the counts: files in = files cached + files skipped (asserted),
                                        clips out; and the command that prepared it.
Shard k holds the records k * shard_size ... (k + 1) * shard_size - 1 (their clips, minus the skipped).

A rerun verifies every shard it would reuse (size and sha256) and decodes again the ones that fail,
and those with a skipped file that changed since (it may have been fixed); ``CacheReport.redone``
says which and why.

``CachedClipDataset(out_dir, split=...)`` reads it back: items as ClipDataset's (video float32
(T, 3, H, W) in [0, 1], audio float32 (S,) in [-1, 1], labels, category, method, ...). It checks each
shard's size when it opens it and each row's checksum when it reads it; a missing, truncated or
altered shard raises CacheError naming the shard and the command that redoes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors
from torch.utils.data import Dataset
from tqdm import tqdm

from avfused.checkpoint import atomic_write_bytes, remove_stale_temporaries
from avfused.data.datasets import ClipRecord, clip_item, records_fingerprint
from avfused.data.decode import ClipSpec, probe, read_clip
from avfused.errors import CacheError, ConfigError, DataError

log = logging.getLogger(__name__)

AUDIO_DTYPES = {"int16": torch.int16, "float16": torch.float16}
FORMAT_VERSION = 2  # 2: checksums of shards and rows, signatures of skipped files


@dataclass
class CacheReport:
    """What a prepare run did (counts are over files; ``clips`` counts the windows written)."""

    out_dir: str
    files_in: int
    files_cached: int
    files_skipped: int
    clips: int
    shards: int
    shards_reused: int
    skipped: list[dict] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)  # "shard-NNNNN: why it was decoded again"


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def _row_digest(video: np.ndarray, audio: np.ndarray) -> str:
    """Checksum of one clip's stored bytes (a reader verifies each row it reads)."""
    digest = hashlib.sha256(np.ascontiguousarray(video).tobytes())
    digest.update(np.ascontiguousarray(audio).tobytes())
    return digest.hexdigest()[:32]


def _file_signature(path: str) -> list[int] | None:
    """(size, mtime) of a file, None when it cannot be found: a skipped file whose signature changed may be fixed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _window_starts(path: str, spec: ClipSpec, windows: int) -> list[float]:
    if windows <= 1:
        return [0.0]
    last = max(0.0, probe(path).duration - spec.seconds)
    return sorted({round(float(s), 6) for s in np.linspace(0.0, last, windows)})


def _encode_audio(audio: torch.Tensor, dtype: str) -> torch.Tensor:
    if dtype == "int16":
        return (audio.clamp(-1, 1) * 32767.0).round().to(torch.int16)
    return audio.to(torch.float16)


def decode_record(
    job: tuple[int, dict, dict, str, int],
) -> tuple[int, list[tuple[float, np.ndarray, np.ndarray]] | None, dict | None]:
    """Worker: decode the clips of one record -> (index, [(start, video uint8, audio)], None), or
    (index, None, {"error", "reason"}) when the file is bad."""
    index, record, spec_fields, audio_dtype, windows = job
    spec = ClipSpec(**spec_fields)
    path = record["path"]
    try:
        clips = []
        for start in _window_starts(path, spec, windows):
            clip = read_clip(path, spec, start=start)
            video = (clip.video * 255.0).round().to(torch.uint8)
            clips.append((start, video.numpy(), _encode_audio(clip.audio, audio_dtype).numpy()))
        return index, clips, None
    except DataError as error:
        return index, None, {"error": type(error).__name__, "reason": error.reason}


def _header(spec: ClipSpec, audio_dtype: str, shard_size: int, windows: int, records: Sequence[ClipRecord]) -> dict:
    return {
        "format": FORMAT_VERSION,
        "spec": asdict(spec),
        "audio_dtype": audio_dtype,
        "shard_size": shard_size,
        "windows_per_file": windows,
        "records": len(records),
        "fingerprint": records_fingerprint(records),
    }


def _check_or_write_header(out: Path, header: dict, overwrite: bool) -> None:
    path = out / "cache.json"
    if path.exists() and not overwrite:
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(path, f"unreadable cache header ({exc}); pass overwrite to start again") from exc
        if old != header:
            differ = sorted(k for k in header if old.get(k) != header[k])
            raise CacheError(
                path,
                f"the cache was prepared with other settings or records ({differ}); "
                "use another folder or pass overwrite to start again",
            )
        return
    if overwrite and (out / "shards").exists():
        for stale in (out / "shards").iterdir():
            stale.unlink()
        (out / "index.json").unlink(missing_ok=True)
    _atomic_write(path, json.dumps(header, indent=1).encode())


def _write_shard(
    shards: Path,
    number: int,
    records: Sequence[ClipRecord],
    first: int,
    results: dict[int, tuple],
    audio_dtype: str,
    seconds: float,
) -> None:
    clips, skipped, videos, audios = [], [], [], []
    for offset, record in enumerate(records):
        decoded, problem = results[first + offset]
        if problem is not None:
            skipped.append({"path": record.path, **problem, "signature": _file_signature(record.path)})
            continue
        for start, video, audio in decoded:
            label, visual, audio_label = record.labels_for_window(start, start + seconds)
            clips.append(
                {
                    "record": record.to_dict(),
                    "start": start,
                    "label": label,
                    "visual_label": visual,
                    "audio_label": audio_label,
                    "sha256": _row_digest(video, audio),
                }
            )
            videos.append(torch.from_numpy(video))
            audios.append(torch.from_numpy(audio))
    name = f"shard-{number:05d}"
    file = None
    if videos:
        tensors = {"video": torch.stack(videos).contiguous(), "audio": torch.stack(audios).contiguous()}
        blob = save_tensors(tensors)
        _atomic_write(shards / f"{name}.safetensors", blob)
        file = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    meta = {"clips": clips, "skipped": skipped, "file": file}
    _atomic_write(shards / f"{name}.json", json.dumps(meta).encode())


def _shard_problem(shards: Path, number: int) -> str | None:
    """Why shard ``number`` (marked done) cannot be reused as it is, or None when it can."""
    name = f"shard-{number:05d}"
    try:
        meta = json.loads((shards / f"{name}.json").read_text())
        clips, skipped, file = meta["clips"], meta["skipped"], meta["file"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return f"its {name}.json is unreadable ({type(exc).__name__})"
    path = shards / f"{name}.safetensors"
    if clips:
        if not path.is_file():
            return f"{path.name} is missing"
        size = path.stat().st_size
        if size != file["bytes"]:
            return f"{path.name} has {size} bytes, {file['bytes']} were written (truncated or altered)"
        if _sha256_file(path) != file["sha256"]:
            return f"{path.name} does not match its sha256 (corrupted or altered)"
    for item in skipped:
        if _file_signature(item["path"]) != item.get("signature"):
            return f"skipped file {item['path']} changed since ({item['reason']}); it may read now"
    return None


def prepare_cache(
    records: Sequence[ClipRecord],
    out_dir: str | os.PathLike,
    spec: ClipSpec | None = None,
    shard_size: int = 256,
    workers: int = 0,
    audio_dtype: str = "int16",
    windows_per_file: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> CacheReport:
    """Decode ``records`` into a shard cache in ``out_dir`` (see the module docstring); resumes an
    interrupted run with the same records and settings, verifying what it reuses. Bad files are skipped
    and reported. ``command``: the command line that redoes it, for readers' error messages."""
    spec = spec or ClipSpec()
    if audio_dtype not in AUDIO_DTYPES:
        raise ConfigError(f"audio_dtype must be one of {sorted(AUDIO_DTYPES)}, got {audio_dtype!r}")
    if shard_size < 1 or windows_per_file < 1:
        raise ConfigError(f"shard_size and windows_per_file must be >= 1, got {shard_size}, {windows_per_file}")
    out = Path(out_dir)
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    _check_or_write_header(out, _header(spec, audio_dtype, shard_size, windows_per_file, records), overwrite)
    for stale in shards.glob("*.tmp"):  # left by an interrupted run of an older avfused
        stale.unlink()
    remove_stale_temporaries(shards)
    remove_stale_temporaries(out)

    count = -(-len(records) // shard_size)
    marked = [n for n in range(count) if (shards / f"shard-{n:05d}.json").exists()]
    done, redone = set(), []
    for n in tqdm(marked, desc="verifying", unit="shard", disable=not progress or not marked, leave=False):
        problem = _shard_problem(shards, n)
        if problem is None:
            done.add(n)
            continue
        redone.append(f"shard-{n:05d}: {problem}")
        log.warning("shard-%05d: %s; decoding it again", n, problem)
        (shards / f"shard-{n:05d}.json").unlink()
        (shards / f"shard-{n:05d}.safetensors").unlink(missing_ok=True)
    pending = [n for n in range(count) if n not in done]
    jobs = [
        (i, records[i].to_dict(), asdict(spec), audio_dtype, windows_per_file)
        for n in pending
        for i in range(n * shard_size, min(len(records), (n + 1) * shard_size))
    ]
    bar = tqdm(total=len(records), initial=len(records) - len(jobs), desc="prepare", unit="file", disable=not progress)
    results: dict[int, tuple] = {}
    queue = list(pending)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 and jobs else None
    try:
        stream = pool.imap(decode_record, jobs, chunksize=2) if pool else map(decode_record, jobs)
        for index, decoded, problem in stream:
            results[index] = (decoded, problem)
            bar.update()
            if problem is not None:
                bar.write(f"skipped {records[index].path}: {problem['reason']}")
            while queue and all(
                i in results for i in range(queue[0] * shard_size, min(len(records), (queue[0] + 1) * shard_size))
            ):
                n = queue.pop(0)
                first = n * shard_size
                _write_shard(shards, n, records[first : first + shard_size], first, results, audio_dtype, spec.seconds)
                for i in range(first, min(len(records), first + shard_size)):
                    results.pop(i)
    finally:
        bar.close()
        if pool:
            pool.terminate()
            pool.join()
    report = _write_index(out, count, len(records), len(done), command)
    report.redone = redone
    return report


def _write_index(out: Path, count: int, files_in: int, reused: int, command: str | None) -> CacheReport:
    clips, skipped, shard_list = [], [], []
    for n in range(count):
        meta_path = out / "shards" / f"shard-{n:05d}.json"
        meta = json.loads(meta_path.read_text())
        name = f"shard-{n:05d}.safetensors"
        for row, clip in enumerate(meta["clips"]):
            clips.append({"shard": name, "row": row, **clip})
        skipped.extend(meta["skipped"])
        file = {"file": name if meta["clips"] else None, "clips": len(meta["clips"])}
        shard_list.append({**file, **(meta["file"] or {})})
    cached_files = len({c["record"]["path"] for c in clips})
    if files_in != cached_files + len(skipped):  # every file is accounted for, nothing dropped silently
        raise CacheError(out, f"{files_in} files in but {cached_files} cached + {len(skipped)} skipped")
    index = {
        "counts": {
            "files_in": files_in,
            "files_cached": cached_files,
            "files_skipped": len(skipped),
            "clips": len(clips),
        },
        "shards": shard_list,
        "clips": clips,
        "skipped": skipped,
        "prepared_with": command,
    }
    _atomic_write(out / "index.json", json.dumps(index).encode())
    return CacheReport(str(out), files_in, cached_files, len(skipped), len(clips), count, reused, skipped)


class CachedClipDataset(Dataset):
    """The clips of a prepared cache, optionally one split ("train", "val", "test") only."""

    def __init__(self, cache_dir: str | os.PathLike, split: str | None = None) -> None:
        self.root = Path(cache_dir)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise CacheError(index_path, "no index.json: run `avfused prepare` (to the end) first")
        try:
            index = json.loads(index_path.read_text())
            header = json.loads((self.root / "cache.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(self.root, f"unreadable cache index ({exc})") from exc
        self.spec = ClipSpec(**header["spec"])
        self.audio_dtype = header["audio_dtype"]
        self.skipped = index["skipped"]
        self.clips = [c for c in index["clips"] if split is None or c["record"].get("split") == split]
        self._records = [ClipRecord.from_dict(c["record"]) for c in self.clips]
        self._sizes = {s["file"]: s.get("bytes") for s in index["shards"] if s.get("file")}
        command = index.get("prepared_with")
        self.fix = (f"run `{command}` again to decode it anew" if command else
                    f"run `avfused prepare` again with the options that wrote this cache (--out {self.root}) "
                    "to decode it anew")  # fmt: skip
        if self.clips and "sha256" not in self.clips[0]:
            log.warning("%s was prepared without checksums (an older avfused): corruption cannot be detected; "
                        "prepare it again with --overwrite", self.root)  # fmt: skip
        self._handles: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def __getstate__(self) -> dict:  # open shard handles do not cross process boundaries
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _shard(self, name: str):
        if name not in self._handles:
            path = self.root / "shards" / name
            if not path.is_file():
                raise CacheError(path, f"shard listed in index.json is missing; {self.fix}")
            expected = self._sizes.get(name)
            if expected is not None and path.stat().st_size != expected:
                raise CacheError(
                    path, f"has {path.stat().st_size} bytes, {expected} were written (truncated or altered); {self.fix}"
                )
            try:
                self._handles[name] = safe_open(str(path), framework="pt")
            except Exception as exc:  # safetensors raises its own error type for a damaged file
                raise CacheError(path, f"cannot be read ({exc}); {self.fix}") from None
        return self._handles[name]

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        shard = self._shard(clip["shard"])
        try:
            video = shard.get_slice("video")[clip["row"]]
            audio = shard.get_slice("audio")[clip["row"]]
        except Exception as exc:
            raise CacheError(self.root / "shards" / clip["shard"], f"cannot be read ({exc}); {self.fix}") from None
        if "sha256" in clip and _row_digest(video.numpy(), audio.numpy()) != clip["sha256"]:
            raise CacheError(
                self.root / "shards" / clip["shard"],
                f"row {clip['row']} does not match its checksum (corrupted or altered); {self.fix}",
            )
        video = video.float().div_(255.0)
        audio = audio.float()
        if self.audio_dtype == "int16":
            audio = audio.div_(32767.0)
        return clip_item(self._records[index], video, audio, clip["start"], self.spec.seconds)
