"""FakeAVCeleb's ``meta_data.csv`` as it really is: reading it, fine-grained types and the duplicate-row rule.

The file has the columns source, target1, target2, method, category, type, race, gender, path and an
unnamed trailing column that holds the file's directory. About 22
files appear on two rows with conflicting methods. The rule, reported file by file:

* rows of one file that agree on (category, method) are one file: the first row is kept;
* rows that disagree: only rows whose (category, method) pair is possible in FakeAVCeleb count
  (a RealVideo row cannot carry a face-manipulation method, a RealAudio row cannot carry rtvc, ...);
  if exactly one reading remains the file gets it, otherwise the file is dropped, never guessed.

A file that appears once is kept whatever its method. Its fine-grained ``type_code`` (used by the
leave-one-type-out protocol) is RVRA (real), RVFA (rtvc), FVRA-WL / FVRA-FS / FVRA-GAN (wav2lip /
faceswap / fsgan with real audio), FVFA-WL / FVFA-FS / FVFA-GAN (wav2lip / faceswap-wav2lip /
fsgan-wav2lip with fake audio), or None for a pair outside that table.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from avfused.data.records import (
    CATEGORIES,
    ClipRecord,
    category_of,
    identity_splits,
    load_json,
    require_dir,
    require_file,
)
from avfused.errors import MetadataError

log = logging.getLogger(__name__)

FAKEAVCELEB_COLUMNS = ("source", "target1", "target2", "method", "category", "type", "race", "gender", "path")
_FAKEAVCELEB_LETTERS = {"A": "RVRA", "B": "RVFA", "C": "FVRA", "D": "FVFA"}
TYPE_CODES = {
    ("RVRA", "real"): "RVRA",
    ("RVFA", "rtvc"): "RVFA",
    ("FVRA", "wav2lip"): "FVRA-WL",
    ("FVRA", "faceswap"): "FVRA-FS",
    ("FVRA", "fsgan"): "FVRA-GAN",
    ("FVFA", "wav2lip"): "FVFA-WL",
    ("FVFA", "faceswap-wav2lip"): "FVFA-FS",
    ("FVFA", "fsgan-wav2lip"): "FVFA-GAN",
}
FAKEAVCELEB_TYPES = tuple(TYPE_CODES.values())


def type_code(record: ClipRecord) -> str | None:
    """The fine-grained FakeAVCeleb type of a ClipRecord, or None when (category, method) is not one."""
    return TYPE_CODES.get((record.category, record.method.strip().lower()))


@dataclass
class MetadataTable:
    records: list[ClipRecord]  # one per file
    report: list[str] = field(default_factory=list)
    rows_read: int = 0


def resolve_duplicates(records: Sequence[ClipRecord]) -> tuple[list[ClipRecord], list[str]]:
    """Apply the module's rule to ClipRecords read row by row: (one record per file, what was done)."""
    grouped: OrderedDict[str, list] = OrderedDict()
    for record in records:
        grouped.setdefault(record.path, []).append(record)
    kept, report = [], []
    for path, rows in grouped.items():
        if len(rows) == 1:
            kept.append(rows[0])
            continue
        readings = sorted({(r.category, r.method) for r in rows})
        possible = [r for r in rows if type_code(r) is not None]
        possible_readings = sorted({(r.category, r.method) for r in possible})
        if len(readings) == 1:
            report.append(f"{path}: {len(rows)} identical rows, kept one")
            kept.append(rows[0])
        elif len(possible_readings) == 1:
            ignored = sorted(set(readings) - set(possible_readings))
            report.append(f"{path}: {len(rows)} rows, kept {possible_readings[0]}, ignored impossible {ignored}")
            kept.append(possible[0])
        else:
            report.append(f"{path}: dropped, {len(rows)} rows with conflicting readings {readings}")
    return kept, report


def _fakeavceleb_file(root: Path, directory: str, name: str) -> str:
    """Resolve the CSV's directory (which usually starts with the dataset folder's own name)."""
    parts = Path(directory.replace("\\", "/")).parts
    candidates = [root.joinpath(*parts, name)]
    if parts and parts[0] == root.name:
        candidates.append(root.joinpath(*parts[1:], name))
    candidates.append(root.parent.joinpath(*parts, name))
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    return str(candidates[-2] if len(candidates) == 3 else candidates[0])


def _fakeavceleb_labels(row: dict, where: str) -> tuple[int, int]:
    kind = row["type"].replace(" ", "").lower()
    if kind.count("video") == 1 and kind.count("audio") == 1:
        return int(kind.startswith("fakevideo")), int("fakeaudio" in kind)
    category = _FAKEAVCELEB_LETTERS.get(row["category"].strip().upper(), row["category"].strip().upper())
    if category in CATEGORIES:
        return int(category[0] == "F"), int(category[2] == "F")
    raise MetadataError(where, f"type {row['type']!r} / category {row['category']!r} name no known category")


def fakeavceleb_records(root: str | os.PathLike, metadata: str = "meta_data.csv") -> list[ClipRecord]:
    """Records of FakeAVCeleb (and of ``avfused synth`` output, written in the same layout), one per file:
    duplicate rows are resolved or dropped by the rule above, and logged."""
    records, report = resolve_duplicates(fakeavceleb_rows(root, metadata))
    for line in report:
        log.warning("meta_data.csv: %s", line)
    return records


def fakeavceleb_rows(root: str | os.PathLike, metadata: str = "meta_data.csv") -> list[ClipRecord]:
    """One record per row of FakeAVCeleb's metadata CSV, duplicates included (see fakeavceleb_records)."""
    root = require_dir(root)
    csv_path = require_file(root / metadata, "FakeAVCeleb metadata CSV")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise MetadataError(csv_path, "the metadata CSV is empty (expected a header row)")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in FAKEAVCELEB_COLUMNS if c not in header]
    if missing:
        raise MetadataError(csv_path, f"missing column(s) {missing}; expected {list(FAKEAVCELEB_COLUMNS)} + directory")
    unnamed = [i for i, h in enumerate(header) if h == "" or h.lower().startswith("unnamed")]
    if not unnamed:
        raise MetadataError(csv_path, "no unnamed trailing column holding the directory of each file")
    column = {name: header.index(name) for name in FAKEAVCELEB_COLUMNS}
    directory = unnamed[-1]
    splits = identity_splits(root / "splits.json")
    families = load_json(root / "methods.json") if (root / "methods.json").is_file() else {}
    records = []
    for number, values in enumerate(rows[1:], start=2):
        if not any(v.strip() for v in values):
            continue
        if len(values) <= max(directory, *column.values()):
            raise MetadataError(csv_path, f"row {number} has {len(values)} fields, expected {len(header)}")
        row = {name: values[i].strip() for name, i in column.items()}
        visual, audio = _fakeavceleb_labels(row, f"{csv_path} row {number}")
        folder = values[directory].strip()
        extra = {k: row[k] for k in ("target1", "target2", "race", "gender")}
        if f"{folder}/{row['path']}" in families:
            extra["family"] = families[f"{folder}/{row['path']}"]
        records.append(
            ClipRecord(
                path=_fakeavceleb_file(root, folder, row["path"]),
                label=int(visual or audio),
                visual_label=visual,
                audio_label=audio,
                category=category_of(visual, audio),
                method=row["method"] or "unknown",
                identity=row["source"],
                dataset="fakeavceleb",
                split=splits.get(row["source"]),
                extra=extra,
            )
        )
    return records


def read_fakeavceleb_metadata(path: str | Path) -> MetadataTable:
    """Read a FakeAVCeleb-layout dataset (its root folder or its metadata CSV) with the duplicate rule."""
    path = Path(path)
    rows = fakeavceleb_rows(path.parent, path.name) if path.suffix == ".csv" else fakeavceleb_rows(path)
    records, report = resolve_duplicates(rows)
    return MetadataTable(records=records, report=report, rows_read=len(rows))
