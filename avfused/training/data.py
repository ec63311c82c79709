"""Data for training and evaluation: records of a dataset, the splits and method filters, and a decoded
in-memory copy of small sets (decode each video once, not once per epoch).

    DataSource(path, dataset, split_seed, fractions)   where the clips come from; JSON-able, so a
                                                       checkpoint remembers what it was trained on
    select_records(records, methods)                   reals plus the fakes of the given methods
    MemoryClips(dataset)                               items of a clip dataset, video kept as uint8
                                                       (T, 3, H, W), audio float32 (S,)
    split_datasets(source, spec, splits, methods)      {split: Dataset} from a dataset layout (decoded
                                                       with read_clip) or from a cache that
                                                       ``avfused prepare`` wrote (a folder with index.json)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from avfused.data.datasets import ClipDataset, ClipRecord, load_records, split_by_identity
from avfused.data.decode import ClipSpec
from avfused.errors import ConfigError

log = logging.getLogger("avfused")

META_KEYS = ("category", "method", "identity", "path", "start")


@dataclass(frozen=True)
class DataSource:
    """A dataset root and how it is split into train / val / test (whole identities per split)."""

    path: str
    dataset: str = "fakeavceleb"
    split_seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)

    @property
    def is_cache(self) -> bool:
        """True when ``path`` is a cache written by ``avfused prepare``."""
        return (Path(self.path) / "index.json").is_file()

    def records(self) -> dict[str, list[ClipRecord]]:
        """{'train', 'val', 'test'} -> records; a record's own split (synthetic, LAV-DF ...) is respected."""
        return self.split(load_records(self.dataset, self.path))

    def split(self, records: Sequence[ClipRecord]) -> dict[str, list[ClipRecord]]:
        return split_by_identity(records, self.fractions, self.split_seed, respect_given=True)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fractions"] = list(self.fractions)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DataSource:
        data = dict(data)
        data["fractions"] = tuple(data.get("fractions", (0.7, 0.15, 0.15)))
        return cls(**data)


def select_records(records: Sequence[ClipRecord], methods: Sequence[str] | None) -> list[ClipRecord]:
    """Real clips plus the fakes whose method is in ``methods`` (all of them when ``methods`` is None)."""
    if not methods:
        return list(records)
    wanted = {m.lower() for m in methods}
    known = {r.method.lower() for r in records if r.label == 1}
    unknown = wanted - known
    if unknown:
        raise ConfigError(f"method(s) {sorted(unknown)} do not occur among the fakes; known: {sorted(known)}")
    return [r for r in records if r.label == 0 or r.method.lower() in wanted]


def _identity(items: list) -> list:
    return items


class MemoryClips(Dataset):
    """Decode every item of ``dataset`` once (``workers`` processes) and serve copies from memory.

    Items the dataset skipped (unreadable files) are left out and counted in ``skipped``.
    """

    def __init__(self, dataset: Dataset, workers: int = 0, description: str = "decoding", progress: bool = True):
        self.items: list[dict] = []
        self.skipped: list[str] = []
        loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=_identity)
        for (item,) in tqdm(loader, desc=description, unit="clip", disable=not progress, leave=False):
            if "skipped" in item:
                self.skipped.append(item["skipped"])
                continue
            item = dict(item)
            item["video"] = (item["video"].clamp(0, 1) * 255).round().to(torch.uint8)
            self.items.append(item)
        if self.skipped:
            log.warning("%d of %d clips could not be read and are left out", len(self.skipped), len(dataset))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.items[index])
        item["video"] = item["video"].float().div_(255.0)
        return item


# estimated bytes of decoded clips kept in memory before "auto" stops decoding everything up front
MEMORY_LIMIT = 3 * 2**30


def _clip_bytes(spec: ClipSpec) -> int:
    return spec.frames * 3 * spec.image_size * spec.image_size + 4 * spec.num_samples


def _check_cache_spec(cache_spec: ClipSpec, spec: ClipSpec, path: str) -> None:
    fields = ("frames", "image_size", "sample_rate", "seconds")
    wrong = [f"{f} {getattr(cache_spec, f)} (model {getattr(spec, f)})" for f in fields
             if getattr(cache_spec, f) != getattr(spec, f)]  # fmt: skip
    if wrong:
        raise ConfigError(
            f"the cache {path} holds clips of another size: {', '.join(wrong)}; prepare it again with the "
            "model's --preset, or train with a preset that matches it"
        )


def split_datasets(
    source: DataSource,
    spec: ClipSpec,
    splits: Sequence[str] = ("train", "val", "test"),
    methods: dict[str, Sequence[str] | None] | None = None,
    in_memory: str = "auto",
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Dataset]:
    """The datasets of ``splits`` (fakes restricted to ``methods[split]`` when given).

    ``in_memory``: "yes" decodes every clip once up front, "no" decodes on each access, "auto" decodes
    up front when the decoded clips fit in MEMORY_LIMIT. A cache is read from its shards as it is.
    """
    methods = methods or {}
    if in_memory not in ("auto", "yes", "no"):
        raise ConfigError(f"in_memory must be 'auto', 'yes' or 'no', got {in_memory!r}")
    out: dict[str, Dataset] = {}
    if source.is_cache:
        from avfused.data.cache import CachedClipDataset

        cache = CachedClipDataset(source.path)
        _check_cache_spec(cache.spec, spec, source.path)
        records = [ClipRecord.from_dict(c["record"]) for c in cache.clips]
        by_split = source.split(records)
        position = {id(r): i for i, r in enumerate(records)}
        for name in splits:
            chosen = select_records(by_split[name], methods.get(name))
            out[name] = Subset(cache, sorted(position[id(r)] for r in chosen))
        return out
    by_split = source.records()
    for name in splits:
        chosen = select_records(by_split[name], methods.get(name))
        dataset = ClipDataset(chosen, spec, on_error="skip")
        keep = in_memory == "yes" or (in_memory == "auto" and len(chosen) * _clip_bytes(spec) <= MEMORY_LIMIT)
        out[name] = MemoryClips(dataset, workers, f"decoding {name}", progress) if keep else dataset
    return out
