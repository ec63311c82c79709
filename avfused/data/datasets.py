"""Loaders for the public audio-visual deepfake benchmarks, an identity split, and a torch Dataset.

Each loader reads a dataset's own metadata into :class:`ClipRecord` s (one per video file); labels are
1 = fake, 0 = real, -1 = unknown (DFDC does not say which modality was changed: its audio label is -1,
so a loss should ignore it, e.g. ``cross_entropy(..., ignore_index=-1)``).

    fakeavceleb_records(root)  meta_data.csv: source, target1, target2, method, category, type, race,
                               gender, path + an unnamed trailing column holding the directory.
                               Categories A = RVRA, B = RVFA, C = FVRA, D = FVFA. Identity = source.
                               An optional splits.json {identity: split} beside it fixes the split;
                               an optional methods.json {directory/path: family} (``avfused synth``)
                               lands in ``extra["family"]``.
    dfdc_records(root)         every <folder>/metadata.json {"x.mp4": {"label": "FAKE"|"REAL",
                               "original": ..., "split": ...}}. Identity = the original (real) video,
                               so a fake and its source share a split. Fakes: category "FAKE".
    dftimit_records(root)      DeepfakeTIMIT's lower_quality/ and higher_quality/ trees (or LQ/, HQ/)
                               beside VidTIMIT/ (real videos), each <tree>/<subject>/<video>. Fakes are
                               visual only (FVRA, audio label 0). Identity = subject folder.
    lavdf_records(root)        LAV-DF / AV-Deepfake1M: metadata.json (or *_metadata.json) list of
                               {"file", "split", "fake_periods" | "fake_segments", "modify_video",
                               "modify_audio"} (AV-Deepfake1M's "visual_fake_segments",
                               "audio_fake_segments" and "modify_type" too). Labels of a window count
                               only the fake periods inside it. Identity = the original video.

``ClipDataset(records, spec)`` yields dicts: video (T, 3, H, W) float32, audio (S,) float32,
label / visual_label / audio_label (int64 scalars), category, method, identity, path, start.
With ``on_error="skip"`` a bad file yields {"skipped": reason, "path": ...} (and is logged);
:func:`collate_clips` leaves those out of the batch and lists them under "skipped" -- never zeros in
place of a clip.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from avfused.data.decode import VIDEO_EXTENSIONS, ClipSpec, probe, read_clip, window_starts
from avfused.data.fakeavceleb import fakeavceleb_records
from avfused.data.records import (  # noqa: F401  (ClipRecord, CATEGORIES, category_of: re-exported)
    CATEGORIES,
    ClipRecord,
    Periods,
    category_of,
    identity_splits,
    load_json,
    require_dir,
    require_file,
)
from avfused.errors import ConfigError, DataError, MetadataError

log = logging.getLogger(__name__)

def dfdc_records(root: str | os.PathLike) -> list[ClipRecord]:
    """Records of DFDC from every metadata.json under ``root``."""
    root = require_dir(root)
    files = sorted(root.rglob("metadata.json"))
    if not files:
        raise MetadataError(root, "no metadata.json found under the DFDC root")
    records = []
    for meta in files:
        entries = load_json(meta)
        if not isinstance(entries, dict):
            raise MetadataError(meta, f"expected an object of file -> entry, got {type(entries).__name__}")
        for name, entry in sorted(entries.items()):
            label_text = str(entry.get("label", "")).upper() if isinstance(entry, dict) else ""
            if label_text not in ("FAKE", "REAL"):
                raise MetadataError(meta, f"entry {name!r} has no label FAKE or REAL (got {entry!r})")
            fake = int(label_text == "FAKE")
            split = entry.get("split")
            records.append(
                ClipRecord(
                    path=str(meta.parent / name),
                    label=fake,
                    visual_label=fake,
                    audio_label=0 if not fake else -1,
                    category="FAKE" if fake else "RVRA",
                    method="unknown" if fake else "real",
                    identity=str(entry.get("original") or name) if fake else name,
                    dataset="dfdc",
                    split=split if split in ("train", "val", "test") else None,
                )
            )
    return records


_DFTIMIT_TREES = {"lower_quality": "lq", "lq": "lq", "higher_quality": "hq", "hq": "hq", "vidtimit": "real"}


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def dftimit_records(root: str | os.PathLike) -> list[ClipRecord]:
    """Records of DeepfakeTIMIT (LQ and HQ fakes) and the VidTIMIT real videos beside them."""
    root = require_dir(root)
    trees: dict[str, Path] = {}
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            kind = _DFTIMIT_TREES.get(sub.name.lower())
            if kind and kind not in trees:
                trees[kind] = sub
    if "lq" not in trees and "hq" not in trees:
        raise MetadataError(root, "no lower_quality/ or higher_quality/ (LQ/ HQ/) tree of DeepfakeTIMIT found")
    records = []
    for kind, tree in sorted(trees.items()):
        fake = int(kind != "real")
        for video in _videos(tree):
            subject = video.relative_to(tree).parts[0] if len(video.relative_to(tree).parts) > 1 else video.stem
            records.append(
                ClipRecord(
                    path=str(video),
                    label=fake,
                    visual_label=fake,
                    audio_label=0,
                    category=category_of(fake, 0),
                    method=f"faceswap-gan-{kind}" if fake else "real",
                    identity=subject.lower(),
                    dataset="dftimit",
                    extra={"quality": kind},
                )
            )
    return records


def _periods(entry: dict, *keys: str) -> Periods | None:
    for key in keys:
        if key in entry and entry[key] is not None:
            return tuple((float(a), float(b)) for a, b in entry[key])
    return None


def _lavdf_entry(entry: object, root: Path, meta: Path, split_hint: str | None) -> ClipRecord:
    if not isinstance(entry, dict) or "file" not in entry:
        raise MetadataError(meta, f"entry without a 'file' key: {entry!r}"[:300])
    periods = _periods(entry, "fake_periods", "fake_segments")
    visual_periods = _periods(entry, "visual_fake_segments") or periods
    audio_periods = _periods(entry, "audio_fake_segments") or periods
    if "modify_video" in entry or "modify_audio" in entry:
        visual, audio = int(bool(entry.get("modify_video"))), int(bool(entry.get("modify_audio")))
    elif "modify_type" in entry:
        kind = str(entry["modify_type"])
        visual = int(kind in ("visual_modified", "both_modified"))
        audio = int(kind in ("audio_modified", "both_modified"))
    else:
        raise MetadataError(meta, f"entry {entry['file']!r} has neither modify_video/modify_audio nor modify_type")
    method = (
        entry.get("method")
        or {(0, 0): "real", (1, 0): "visual", (0, 1): "audio", (1, 1): "audio-visual"}[(visual, audio)]
    )
    return ClipRecord(
        path=str(root / entry["file"]),
        label=int(visual or audio),
        visual_label=visual,
        audio_label=audio,
        category=category_of(visual, audio),
        method=str(method),
        identity=str(entry.get("original") or entry["file"]),
        split=entry.get("split") or split_hint,
        dataset="lavdf",
        visual_periods=visual_periods if visual else None,
        audio_periods=audio_periods if audio else None,
    )


def lavdf_records(root: str | os.PathLike, metadata: str | None = None) -> list[ClipRecord]:
    """Records of LAV-DF or AV-Deepfake1M (metadata.json, or train/val/test_metadata.json)."""
    root = require_dir(root)
    files = (
        [root / metadata]
        if metadata
        else ([root / "metadata.json"] if (root / "metadata.json").exists() else sorted(root.glob("*_metadata.json")))
    )
    if not files:
        raise MetadataError(root, "no metadata.json or *_metadata.json found")
    records = []
    for meta in files:
        entries = load_json(require_file(meta, "LAV-DF / AV-Deepfake1M metadata"))
        if not isinstance(entries, list):
            raise MetadataError(meta, f"expected a list of entries, got {type(entries).__name__}")
        hint = meta.name[: -len("_metadata.json")] if meta.name.endswith("_metadata.json") else None
        records.extend(_lavdf_entry(e, root, meta, hint) for e in entries)
    return records


DATASETS: dict[str, Callable[..., list[ClipRecord]]] = {
    "fakeavceleb": fakeavceleb_records,
    "synthetic": fakeavceleb_records,
    "dfdc": dfdc_records,
    "dftimit": dftimit_records,
    "lavdf": lavdf_records,
    "avdeepfake1m": lavdf_records,
}


def load_records(dataset: str, root: str | os.PathLike) -> list[ClipRecord]:
    """Records of a dataset by name (see ``DATASETS``)."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[dataset](root)


# ---------------------------------------------------------------------------------------------
SPLITS = ("train", "val", "test")


def split_by_identity(
    records: Sequence[ClipRecord],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    respect_given: bool = True,
) -> dict[str, list[ClipRecord]]:
    """Assign whole identities to train / val / test (deterministic from ``seed``), so no identity's
    clips cross splits. Each split with a positive fraction gets at least one identity when there
    are enough. ``respect_given`` keeps a record's own split (LAV-DF, AV-Deepfake1M ship one)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ConfigError(f"fractions must be three non-negative numbers (train, val, test), got {fractions}")
    out: dict[str, list[ClipRecord]] = {name: [] for name in SPLITS}
    free = []
    for record in records:
        if respect_given and record.split in out:
            out[record.split].append(record)
        else:
            free.append(record)
    identities = sorted({r.identity for r in free})
    order = np.random.default_rng(seed).permutation(len(identities))
    total = float(sum(fractions))
    counts = [int(round(len(identities) * f / total)) for f in fractions]
    for k in (1, 2):  # small datasets: a positive fraction still gets one identity, taken from train
        if fractions[k] > 0 and counts[k] == 0 and len(identities) > 2:
            counts[k] = 1
    counts[0] = len(identities) - counts[1] - counts[2]
    assigned = {}
    bounds = np.cumsum([0, *counts])
    for split_index, name in enumerate(SPLITS):
        for position in order[bounds[split_index] : bounds[split_index + 1]]:
            assigned[identities[position]] = name
    for record in free:
        out[assigned[record.identity]].append(record)
    return out


def records_fingerprint(records: Sequence[ClipRecord]) -> str:
    """A short hash of the records (paths and labels), to tell whether a cache was made from them."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.path}|{r.label}|{r.visual_label}|{r.audio_label}|{r.split}\n".encode())
    return digest.hexdigest()[:16]


class ClipDataset(Dataset):
    """Decode windows of the records' files on access (see the module docstring for the item layout).

    By default one window per record, at ``start``. With ``hop``: every window of ``spec.seconds``
    starting 0, hop, 2 hop ... and one aligned to the end (as ``iter_windows``), from each file's
    duration in its headers; items of one file share its path, so scores can be pooled per video.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        spec: ClipSpec | None = None,
        start: float = 0.0,
        on_error: str = "raise",
        hop: float | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.records, self.spec, self.on_error = list(records), spec or ClipSpec(), on_error
        if hop is None:
            self.windows = [(record, start) for record in self.records]
        else:
            self.windows = [(record, s) for record in self.records for s in self._starts(record, hop)]

    def _starts(self, record: ClipRecord, hop: float) -> list[float]:
        try:
            info = probe(record.path)
        except DataError:
            if self.on_error == "raise":
                raise
            return [0.0]  # reading it fails again at access, where it is reported and skipped
        return window_starts(info.duration, self.spec.seconds, hop, slack=1.0 / info.fps)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict | None:
        record, start = self.windows[index]
        try:
            clip = read_clip(record.path, self.spec, start=start)
        except DataError as error:
            if self.on_error == "raise":
                raise
            log.warning("skipped %s", error)
            return {"skipped": str(error), "path": record.path}
        return clip_item(record, clip.video, clip.audio, start, self.spec.seconds)


def clip_item(record: ClipRecord, video: torch.Tensor, audio: torch.Tensor, start: float, seconds: float) -> dict:
    """The dict a dataset yields for one clip."""
    label, visual, audio_label = record.labels_for_window(start, start + seconds)
    return {
        "video": video,
        "audio": audio,
        "label": torch.tensor(label),
        "visual_label": torch.tensor(visual),
        "audio_label": torch.tensor(audio_label),
        "category": record.category,
        "method": record.method,
        "identity": record.identity,
        "path": record.path,
        "start": start,
    }


def collate_clips(items: Sequence[dict]) -> dict:
    """Stack clips into a batch: tensors gain a leading B, strings become lists; items a dataset
    skipped are left out and listed under "skipped" (B may then be smaller, even 0)."""
    kept = [i for i in items if "skipped" not in i]
    batch: dict = {"skipped": [i["skipped"] for i in items if "skipped" in i]}
    if not kept:
        return batch
    for key, value in kept[0].items():
        values = [i[key] for i in kept]
        batch[key] = torch.stack(values) if isinstance(value, torch.Tensor) else values
    return batch
