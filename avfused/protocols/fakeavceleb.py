"""FakeAVCeleb's ``meta_data.csv`` as it really is, read robustly.

The file has the columns source, target1, target2, method, category, type, race, gender, path and an
unnamed trailing column that holds the file's directory; the video is ``<directory>/<path>``. About 22
files appear on two rows with conflicting methods. The rule (reported row by row in ``MetadataTable.report``):

* rows of one file that agree on (type, method) are one file: the first row is kept;
* rows that disagree: the rows whose (type, method) pair is possible in FakeAVCeleb are kept (RealVideo
  rows cannot carry a face-manipulation method, RealAudio rows cannot carry rtvc, ...); if exactly one
  (type, method) pair remains, the file gets it; otherwise the file is dropped, never guessed.

Each file gets a fine-grained ``type_code`` used by the leave-one-type-out protocol:
RVRA (real), RVFA (rtvc), FVRA-WL / FVRA-FS / FVRA-GAN (wav2lip / faceswap / fsgan, real audio),
FVFA-WL / FVFA-FS / FVFA-GAN (wav2lip / faceswap-wav2lip / fsgan-wav2lip, fake audio).
"""

from __future__ import annotations

import csv
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from avfused.errors import MetadataError

REQUIRED_COLUMNS = ("source", "target1", "target2", "method", "category", "type", "race", "gender", "path")
TYPE_SHORT = {
    "RealVideo-RealAudio": "RVRA",
    "RealVideo-FakeAudio": "RVFA",
    "FakeVideo-RealAudio": "FVRA",
    "FakeVideo-FakeAudio": "FVFA",
}
# (short type, method) -> fine-grained type code; a pair missing here cannot occur in FakeAVCeleb.
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
FAKEAVCELEB_TYPES = tuple(dict.fromkeys(TYPE_CODES.values()))


@dataclass(frozen=True)
class Record:
    """One video of a dataset as the protocols see it. Labels: 1 = fake."""

    path: str
    identity: str
    type_code: str
    method: str
    clip_label: int
    visual_label: int
    audio_label: int


@dataclass
class MetadataTable:
    records: list[Record]
    report: list[str] = field(default_factory=list)
    rows_read: int = 0


def _video_path(row: dict, directory_column: str | None) -> str:
    directory = (row.get(directory_column) or "").strip() if directory_column is not None else ""
    name = row["path"].strip()
    return str(Path(directory) / name) if directory else name


def _record(row: dict, path: str) -> Record | None:
    """The row as a Record, or None when its (type, method) pair cannot occur in FakeAVCeleb."""
    method = row["method"].strip().lower()
    code = TYPE_CODES.get((TYPE_SHORT.get(row["type"].strip(), ""), method))
    if code is None:
        return None
    return Record(
        path=path,
        identity=row["source"].strip(),
        type_code=code,
        method=method,
        clip_label=int(code != "RVRA"),
        visual_label=int(code.startswith("FV")),
        audio_label=int(code == "RVFA" or code.startswith("FVFA")),
    )


def read_fakeavceleb_metadata(csv_path: str | Path) -> MetadataTable:
    """Read ``meta_data.csv``; resolve duplicate rows by the module's documented rule."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MetadataError(csv_path, "metadata file does not exist")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() if name else "" for name in (reader.fieldnames or [])]
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if missing:
            raise MetadataError(csv_path, f"missing column(s) {missing}; found {header}")
        reader.fieldnames = header
        unnamed = [name for name in header if name == "" or name.lower().startswith("unnamed")]
        directory_column = unnamed[-1] if unnamed else None
        rows = list(reader)
    table = MetadataTable(records=[], rows_read=len(rows))
    grouped: OrderedDict[str, list[tuple[int, dict]]] = OrderedDict()
    for line, row in enumerate(rows, start=2):
        grouped.setdefault(_video_path(row, directory_column), []).append((line, row))
    for path, entries in grouped.items():
        valid = [record for record in (_record(row, path) for _, row in entries) if record is not None]
        impossible = [
            f"line {line} ({row['type']}, {row['method']})" for line, row in entries if _record(row, path) is None
        ]
        kinds = sorted({(r.type_code, r.method) for r in valid})
        if not valid:
            table.report.append(f"{path}: dropped, impossible type/method: {'; '.join(impossible)}")
        elif len(kinds) > 1:
            table.report.append(f"{path}: dropped, {len(entries)} rows with conflicting readings {kinds}")
        else:
            if len(entries) > 1:
                ignored = f", ignored {'; '.join(impossible)}" if impossible else ""
                table.report.append(f"{path}: {len(entries)} rows, kept {kinds[0]}{ignored}")
            table.records.append(valid[0])
    return table
