"""FakeAVCeleb's ``meta_data.csv`` as it really is: fine-grained types and the duplicate-row rule.

The file has the columns source, target1, target2, method, category, type, race, gender, path and an
unnamed trailing column that holds the file's directory (``avfused.data.datasets`` reads it). About 22
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

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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


def type_code(record) -> str | None:
    """The fine-grained FakeAVCeleb type of a ClipRecord, or None when (category, method) is not one."""
    return TYPE_CODES.get((record.category, record.method.strip().lower()))


@dataclass
class MetadataTable:
    records: list  # avfused.data.ClipRecord, one per file
    report: list[str] = field(default_factory=list)
    rows_read: int = 0


def resolve_duplicates(records: Sequence) -> tuple[list, list[str]]:
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


def read_fakeavceleb_metadata(path: str | Path) -> MetadataTable:
    """Read a FakeAVCeleb-layout dataset (its root folder or its metadata CSV) with the duplicate rule."""
    from avfused.data.datasets import fakeavceleb_rows

    path = Path(path)
    rows = fakeavceleb_rows(path.parent, path.name) if path.suffix == ".csv" else fakeavceleb_rows(path)
    records, report = resolve_duplicates(rows)
    return MetadataTable(records=records, report=report, rows_read=len(rows))
