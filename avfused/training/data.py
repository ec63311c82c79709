"""Data for training and evaluation: records of a dataset, the splits and method filters, and a decoded
in-memory copy of small sets (decode each video once, not once per epoch).

    DataSource(path, dataset, split_seed, fractions)   where the clips come from; JSON-able, so a
                                                       checkpoint remembers what it was trained on
    fold_source(path, dataset, seed, split_file, fold) the same on a fold of an ``avfused splits`` file
    select_records(records, methods)                   reals plus the fakes of the given methods
    MemoryClips(dataset)                               items of a clip dataset, video kept as uint8
                                                       (T, 3, H, W), audio float32 (S,)
    split_datasets(source, spec, splits, methods)      {split: Dataset} from a dataset layout (decoded
                                                       with read_clip) or from a cache that
                                                       ``avfused prepare`` wrote (a folder with index.json)
    SilenceCueRemoved(dataset, mode, sample_rate)      items without the leading-silence cue (trim, jitter)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from avfused.data.datasets import ClipDataset, ClipRecord, load_records, split_by_identity
from avfused.data.decode import ClipSpec
from avfused.data.features import fit_length
from avfused.errors import ConfigError, SplitMismatchError
from avfused.protocols import load_split, records_named, remove_silence_cue
from avfused.protocols.splits import check_leaks, relative_path, split_leaks

log = logging.getLogger("avfused")


# a split file's fold names train and test files; validation is carved from the fold's train identities
FOLD_VAL_FRACTIONS = (0.85, 0.15, 0.0)
SILENCE_CUE_MODES = ("keep", "trim", "jitter")


@dataclass(frozen=True)
class DataSource:
    """A dataset root and how it is split into train / val / test (whole identities per split).

    Without ``split_file``: identity ``fractions`` drawn with ``split_seed`` (a record's own split is
    respected). With one: fold ``fold`` of that ``avfused splits`` file, whose ``split_sha256`` is
    recorded so a checkpoint names the exact split it was trained on (see FOLD_VAL_FRACTIONS).
    Train, val and test must share no file and no identity, else ``split`` raises SplitLeakError
    unless ``allow_split_leak`` (recorded with the rest; ``leaks()`` lists what they share).
    """

    path: str
    dataset: str = "fakeavceleb"
    split_seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_file: str | None = None
    split_sha256: str | None = None
    fold: str | None = None
    allow_split_leak: bool = False

    @property
    def is_cache(self) -> bool:
        """True when ``path`` is a cache written by ``avfused prepare``."""
        return (Path(self.path) / "index.json").is_file()

    def all_records(self) -> list[ClipRecord]:
        """Every record of the dataset (of a cache: one per clip it holds)."""
        if self.is_cache:
            from avfused.data.cache import CachedClipDataset

            return [ClipRecord.from_dict(c["record"]) for c in CachedClipDataset(self.path).clips]
        return load_records(self.dataset, self.path)

    def records(self) -> dict[str, list[ClipRecord]]:
        """{'train', 'val', 'test'} -> records of the dataset (see ``split``)."""
        return self.split(self.all_records())

    def leaks(self) -> dict:
        """The files and identities train, val and test share (see avfused.protocols.splits.split_leaks)."""
        return split_leaks(self._parts(self.all_records()))

    def split(self, records: Sequence[ClipRecord]) -> dict[str, list[ClipRecord]]:
        parts = self._parts(records)
        check_leaks(parts, self.split_file or self.path, self.allow_split_leak)
        return parts

    def _parts(self, records: Sequence[ClipRecord]) -> dict[str, list[ClipRecord]]:
        if self.split_file is None:
            return split_by_identity(records, self.fractions, self.split_seed, respect_given=True)
        fold = self.load_fold()
        train = records_named(records, fold["train"], self.split_file)
        carved = split_by_identity(train, FOLD_VAL_FRACTIONS, self.split_seed, respect_given=False)
        test = records_named(records, fold["test"], self.split_file)
        return {"train": carved["train"], "val": carved["val"], "test": test}

    def load_fold(self) -> dict:
        """The fold of the split file; its hash is verified and must be the recorded one."""
        split = load_split(self.split_file)
        if self.split_sha256 is not None and split.sha256 != self.split_sha256:
            raise SplitMismatchError(
                self.split_file, f"its sha256 is {split.sha256}, not the recorded {self.split_sha256}: it was replaced"
            )
        return split.fold(self.fold or 0)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fractions"] = list(self.fractions)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DataSource:
        """From ``to_dict``'s output; other keys (a checkpoint stores faces, methods ... beside) are ignored."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["fractions"] = tuple(data.get("fractions", (0.7, 0.15, 0.15)))
        return cls(**data)


def fold_source(
    path: str,
    dataset: str,
    split_seed: int,
    split_file: str | Path,
    fold: str | None = None,
    allow_split_leak: bool = False,
) -> DataSource:
    """A DataSource on ``fold`` (a name or index; default: the first) of ``split_file``, its sha256 recorded."""
    split = load_split(split_file)
    try:
        name = split.fold(fold if fold is not None else 0)["name"]
    except (KeyError, IndexError):
        names = [f["name"] for f in split.folds]
        raise ConfigError(f"{split_file} has no fold {fold!r}; its folds are {names}") from None
    resolved = str(Path(split_file).resolve())
    return DataSource(path, dataset, split_seed, split_file=resolved, split_sha256=split.sha256, fold=name,
                      allow_split_leak=allow_split_leak)  # fmt: skip


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


# the jitter's own random stream, apart from the augmentation's rng(seed, epoch, index)
JITTER_STREAM = 1


class SilenceCueRemoved(Dataset):
    """Items of ``base`` with the leading-silence cue removed from their audio, kept at the clip's length.

    trim: leading and trailing silence cut off (the end zero-padded back); jitter: trimmed, then a random
    0-0.5 s of silence put in front (see avfused.protocols.silence). Jitter draws come from (seed, epoch,
    index) when ``seed`` is given (training: the same on resume and on every rank, like AugmentedDataset),
    else from the file's path relative to ``root`` and the window start (evaluation: the same every run).
    """

    def __init__(
        self, base: Dataset, mode: str, sample_rate: int, seed: int | None = None, root: str | None = None
    ) -> None:
        if mode not in ("trim", "jitter"):
            raise ConfigError(f"silence cue must be one of {SILENCE_CUE_MODES}, got {mode!r}")
        self.base, self.mode, self.sample_rate, self.seed, self.root = base, mode, sample_rate, seed, root
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def _rng(self, index: int, item: dict) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([self.seed, self.epoch, int(index), JITTER_STREAM])
        key = f"{relative_path(item['path'], self.root)}@{item.get('start', 0.0)}"
        return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        if "skipped" in item:
            return item
        audio = item["audio"].numpy()
        cleaned = remove_silence_cue(audio, self.sample_rate, self.mode, rng=self._rng(index, item))
        return {**item, "audio": torch.from_numpy(fit_length(cleaned, audio.shape[-1]))}


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


def _without_silence_cue(
    dataset: Dataset, name: str, mode: str, spec: ClipSpec, train_seed: int | None, root: str
) -> Dataset:
    if mode == "keep":
        return dataset
    seed = train_seed if name == "train" else None
    return SilenceCueRemoved(dataset, mode, spec.sample_rate, seed, root)


def split_datasets(
    source: DataSource,
    spec: ClipSpec,
    splits: Sequence[str] = ("train", "val", "test"),
    methods: dict[str, Sequence[str] | None] | None = None,
    in_memory: str = "auto",
    workers: int = 0,
    progress: bool = True,
    silence_cue: str = "keep",
    train_seed: int | None = None,
    all_windows: bool = False,
) -> dict[str, Dataset]:
    """The datasets of ``splits`` (fakes restricted to ``methods[split]`` when given).

    ``in_memory``: "yes" decodes every clip once up front, "no" decodes on each access, "auto" decodes
    up front when the decoded clips fit in MEMORY_LIMIT. A cache is read from its shards as it is.
    ``silence_cue``: "keep", or "trim" / "jitter" (SilenceCueRemoved); the train split's jitter is drawn
    per (train_seed, epoch, index) when ``train_seed`` is given (training), every other one per file.
    ``all_windows``: every window of spec.seconds of each video (back to back, the last aligned to the
    end) instead of the first one; a cache serves the windows it was prepared with either way.
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
            subset = Subset(cache, sorted(position[id(r)] for r in chosen))
            out[name] = _without_silence_cue(subset, name, silence_cue, spec, train_seed, source.path)
        return out
    by_split = source.records()
    for name in splits:
        chosen = select_records(by_split[name], methods.get(name))
        dataset = ClipDataset(chosen, spec, on_error="skip", hop=spec.seconds if all_windows else None)
        keep = in_memory == "yes" or (in_memory == "auto" and len(dataset) * _clip_bytes(spec) <= MEMORY_LIMIT)
        dataset = MemoryClips(dataset, workers, f"decoding {name}", progress) if keep else dataset
        out[name] = _without_silence_cue(dataset, name, silence_cue, spec, train_seed, source.path)
    return out
