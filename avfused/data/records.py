"""ClipRecord, one video file of a dataset and its labels, and the file helpers every loader shares."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from avfused.errors import MediaNotFoundError, MetadataError

CATEGORIES = ("RVRA", "RVFA", "FVRA", "FVFA")
Periods = tuple[tuple[float, float], ...]


def category_of(visual: int, audio: int) -> str:
    """RVRA / RVFA / FVRA / FVFA from the two modality labels (1 = fake)."""
    return f"{'F' if visual == 1 else 'R'}V{'F' if audio == 1 else 'R'}A"


@dataclass
class ClipRecord:
    """One video file of a dataset and its labels (1 fake, 0 real, -1 unknown).

    visual_periods / audio_periods: the fake spans in seconds for temporally partial fakes (LAV-DF);
    None means the label holds for the whole file.
    """

    path: str
    label: int
    visual_label: int
    audio_label: int
    category: str
    method: str
    identity: str
    split: str | None = None
    dataset: str = ""
    visual_periods: Periods | None = None
    audio_periods: Periods | None = None
    extra: dict = field(default_factory=dict)

    def labels_for_window(self, start: float, end: float) -> tuple[int, int, int]:
        """(clip, visual, audio) labels of the window [start, end): partial fakes count only if a fake
        period overlaps the window."""
        if self.visual_periods is None and self.audio_periods is None:
            return self.label, self.visual_label, self.audio_label
        visual = _window_label(self.visual_label, self.visual_periods, start, end)
        audio = _window_label(self.audio_label, self.audio_periods, start, end)
        return int(visual == 1 or audio == 1), visual, audio

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ClipRecord:
        data = dict(data)
        for key in ("visual_periods", "audio_periods"):
            if data.get(key) is not None:
                data[key] = tuple(tuple(p) for p in data[key])
        return cls(**data)


def _window_label(label: int, periods: Periods | None, start: float, end: float) -> int:
    if periods is None or label != 1:
        return label
    return int(any(a < end and b > start for a, b in periods))


def require_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise MediaNotFoundError(root, "dataset root folder does not exist")
    return root


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MediaNotFoundError(path, f"{what} not found")
    return path


def load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(path, f"unreadable JSON ({exc})") from exc


def identity_splits(path: Path) -> dict[str, str]:
    """Optional identity -> split map beside the CSV (``avfused synth`` writes one)."""
    if not path.exists():
        return {}
    data = load_json(path)
    if not isinstance(data, dict) or not all(v in ("train", "val", "test") for v in data.values()):
        raise MetadataError(path, "expected an object of identity -> 'train' | 'val' | 'test'")
    return data
