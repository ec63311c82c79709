"""Deterministic split files from a dataset's records and a seed.

Protocols:
    kfold        subject-independent k folds: identities are dealt to folds (largest first, to the fold
                 with fewest videos, ties by a seeded shuffle); each fold is a test set once; every video
                 is in exactly one test fold and no identity is in two folds.
    70-30        one identity-disjoint split with about 70% of the videos for training.
    leave-one-type-out
                 one fold per held-out type of LOTO_TYPES (RVFA, FVRA-WL, FVFA-WL, FVFA-FS, FVFA-GAN):
                 identities are first split 70/30; train = training identities' real videos and videos
                 of the other held-out types; test = test identities' real videos and videos of the held
                 type. Types outside LOTO_TYPES (FVRA-FS, FVRA-GAN) are not used and are counted as such.

Records are ``avfused.data.ClipRecord`` s (any dataset); file paths are written relative to the dataset
root when one is given, so a split file works on every machine. A split file is JSON with the protocol,
seed, the folds' file lists, and ``sha256``: the hash of the rest
of the file's content, written into every result computed from it. ``load_split`` checks it, and the
layout (a malformed file is a SplitFileError, never a KeyError).

Leaks: ``split_leaks(parts)`` lists the files and identities that two of train / val / test share; a
command refuses such a split (SplitLeakError) unless told to accept it, and then records what leaked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from avfused.data.fakeavceleb import type_code

# SplitFileError lives in avfused.errors; importable from here as before
from avfused.errors import SplitFileError, SplitLeakError, SplitNamesMissingError

log = logging.getLogger("avfused")

FORMAT = "avfused-split/1"
PROTOCOLS = ("kfold", "70-30", "leave-one-type-out")
LOTO_TYPES = ("RVFA", "FVRA-WL", "FVFA-WL", "FVFA-FS", "FVFA-GAN")
REAL_TYPE = "RVRA"


@dataclass
class SplitFile:
    protocol: str
    seed: int
    dataset: str
    folds: list[dict]
    unused: int = 0

    def content(self) -> dict:
        return {
            "format": FORMAT,
            "protocol": self.protocol,
            "seed": self.seed,
            "dataset": self.dataset,
            "unused": self.unused,
            "folds": self.folds,
        }

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.content(), "sha256": self.sha256}, indent=1) + "\n")
        return path

    def fold(self, name: str | int = 0) -> dict:
        """A fold by index or name."""
        if isinstance(name, int) or str(name).isdigit():
            return self.folds[int(name)]
        for fold in self.folds:
            if fold["name"] == name:
                return fold
        raise KeyError(f"no fold {name!r}; folds are {[f['name'] for f in self.folds]}")


def _check_layout(data: object, path: Path) -> None:
    """The keys and types ``avfused splits`` writes; anything else names what is wrong."""
    if not isinstance(data, dict):
        raise SplitFileError(path, f"a split file is a JSON object, this one is a {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise SplitFileError(path, f"not an {FORMAT} file (format={data.get('format')!r})")
    types = {"protocol": str, "seed": int, "dataset": str, "folds": list, "sha256": str}
    for key, kind in types.items():
        if not isinstance(data.get(key), kind):
            have = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise SplitFileError(path, f"{key!r} must be a {kind.__name__}, it is {have}; regenerate the file")
    for i, fold in enumerate(data["folds"]):
        ok = isinstance(fold, dict) and isinstance(fold.get("name"), str)
        for key in ("train", "test"):
            ok = ok and isinstance(fold.get(key), list) and all(isinstance(n, str) for n in fold[key])
        if not ok:
            raise SplitFileError(path, f"fold {i} is not {{'name': str, 'train': [paths], 'test': [paths]}}")


def load_split(path: str | Path) -> SplitFile:
    """Read a split file and verify its layout and hash."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SplitFileError(path, f"cannot read split file: {exc}") from exc
    _check_layout(data, path)
    split = SplitFile(data["protocol"], data["seed"], data["dataset"], data["folds"], data.get("unused", 0))
    if split.sha256 != data.get("sha256"):
        raise SplitFileError(path, "content does not match its sha256: the file was edited; regenerate it")
    return split


def split_leaks(parts: dict[str, list]) -> dict:
    """What two of the parts (e.g. train / val / test records) share: {"files": [...], "identities": [...]}
    (empty lists when they are disjoint). Files are compared by path, identities by name."""
    files: dict[str, set[str]] = {}
    identities: dict[str, set[str]] = {}
    for name, records in parts.items():
        for record in records:
            files.setdefault(Path(record.path).as_posix(), set()).add(name)
            identities.setdefault(record.identity, set()).add(name)
    return {
        "files": sorted(f for f, names in files.items() if len(names) > 1),
        "identities": sorted(i for i, names in identities.items() if len(names) > 1),
    }


def check_leaks(parts: dict[str, list], source: object, allow: bool, option: str = "--allow-split-leak") -> dict:
    """Raise SplitLeakError when the parts share files or identities, unless ``allow`` (then log a warning);
    returns split_leaks(parts)."""
    leaks = split_leaks(parts)
    if not (leaks["files"] or leaks["identities"]):
        return leaks
    shared = [f"{len(leaks[k])} {k} (e.g. {leaks[k][0]})" for k in ("files", "identities") if leaks[k]]
    what = f"{' and '.join(parts)} share {' and '.join(shared)}"
    if not allow:
        raise SplitLeakError(source, f"{what}: test scores would measure memory; fix the split, or {option} "
                             "accepts it (recorded in the results)")  # fmt: skip
    log.warning("%s: %s; accepted (%s), recorded in the results", source, what, option)
    return leaks


def _deal_identities(records: list, groups: int, seed: int) -> list[set[str]]:
    """Identities into ``groups`` sets with balanced video counts; deterministic from ``seed``."""
    counts = Counter(r.identity for r in records)
    identities = sorted(counts)
    random.Random(seed).shuffle(identities)
    identities.sort(key=lambda identity: -counts[identity])  # stable: shuffled order breaks ties
    sets: list[set[str]] = [set() for _ in range(groups)]
    sizes = [0] * groups
    for identity in identities:
        target = min(range(groups), key=lambda g: (sizes[g], g))
        sets[target].add(identity)
        sizes[target] += counts[identity]
    return sets


def _split_identities(records: list, train_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    counts = Counter(r.identity for r in records)
    identities = sorted(counts)
    random.Random(seed).shuffle(identities)
    train, total, taken = set(), sum(counts.values()), 0
    for identity in identities:
        if taken < train_fraction * total:
            train.add(identity)
            taken += counts[identity]
    return train, set(identities) - train


def relative_path(path: str, root: str | Path | None) -> str:
    """``path`` relative to ``root`` (POSIX separators) when it lies inside it, else unchanged."""
    if root is None:
        return Path(path).as_posix()
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _tail(path: str, depth: int) -> str:
    return "/".join(Path(path).as_posix().split("/")[-depth:])


def records_named(records: Iterable, names: Iterable[str], split_path: str | Path) -> list:
    """The records (in their order) whose files a split file names.

    A name matches a record whose path ends with it: names are relative to the dataset root, a record's
    path is absolute (or, in a prepared cache, the original file's). Every name must match (one file may
    have several records: a cache's windows), else SplitNamesMissingError says how many are missing.
    """
    records, wanted = list(records), set(names)
    depths = {name.count("/") + 1 for name in wanted}
    found = {_tail(r.path, d) for r in records for d in depths} & wanted
    missing = sorted(wanted - found)
    if missing:
        raise SplitNamesMissingError(
            split_path,
            f"{len(missing)} of the {len(wanted)} files it names are not in the dataset (e.g. {missing[0]}); "
            "was it written for another dataset or data root?",
        )
    return [r for r in records if any(_tail(r.path, d) in wanted for d in depths)]


def make_splits(
    records: Iterable,
    protocol: str,
    seed: int = 0,
    dataset: str = "dataset",
    folds: int = 5,
    train_fraction: float = 0.7,
    root: str | Path | None = None,
) -> SplitFile:
    """Build the split file of ``protocol`` (one of PROTOCOLS) for ``records`` (paths relative to ``root``)."""
    records = sorted(records, key=lambda r: r.path)
    if len({r.path for r in records}) != len(records):
        raise ValueError("records must name each file once (resolve duplicates first)")

    def _paths(chosen: Iterable) -> list[str]:
        return sorted(relative_path(r.path, root) for r in chosen)

    if protocol == "kfold":
        if not 2 <= folds <= len({r.identity for r in records}):
            raise ValueError(f"kfold needs 2 <= folds <= number of identities, got folds={folds}")
        sets = _deal_identities(records, folds, seed)
        result = [
            {
                "name": f"fold{i}",
                "train": _paths(r for r in records if r.identity not in held),
                "test": _paths(r for r in records if r.identity in held),
            }
            for i, held in enumerate(sets)
        ]
        return SplitFile(protocol, seed, dataset, result)
    if protocol == "70-30":
        train, test = _split_identities(records, train_fraction, seed)
        fold = {
            "name": "70-30",
            "train": _paths(r for r in records if r.identity in train),
            "test": _paths(r for r in records if r.identity in test),
        }
        return SplitFile(protocol, seed, dataset, [fold])
    if protocol == "leave-one-type-out":
        codes = {r.path: type_code(r) for r in records}
        used = [r for r in records if codes[r.path] in LOTO_TYPES + (REAL_TYPE,)]
        train_ids, test_ids = _split_identities(used, train_fraction, seed)
        result = []
        for held in LOTO_TYPES:
            train_types = {REAL_TYPE} | (set(LOTO_TYPES) - {held})
            result.append(
                {
                    "name": held,
                    "train": _paths(r for r in used if r.identity in train_ids and codes[r.path] in train_types),
                    "test": _paths(r for r in used if r.identity in test_ids and codes[r.path] in (held, REAL_TYPE)),
                }
            )
        return SplitFile(protocol, seed, dataset, result, unused=len(records) - len(used))
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
