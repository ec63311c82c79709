"""``avfused splits``: write a deterministic split file for a dataset's protocol, with its hash."""

from __future__ import annotations

import argparse
from pathlib import Path

from avfused.protocols import PROTOCOLS, make_splits, read_fakeavceleb_metadata

HELP = "write a deterministic, identity-disjoint split file (k-fold, 70/30, leave-one-type-out)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root (FakeAVCeleb layout: holds meta_data.csv)")
    parser.add_argument("--dataset", default="fakeavceleb", choices=["fakeavceleb"], help="dataset layout")
    parser.add_argument("--protocol", default="kfold", choices=PROTOCOLS, help="split protocol")
    parser.add_argument("--folds", type=int, default=5, help="number of folds for --protocol kfold")
    parser.add_argument("--train-fraction", type=float, default=0.7, help="share of videos for training (70-30, LOTO)")
    parser.add_argument("--seed", type=int, default=0, help="seed that fixes the split")
    parser.add_argument(
        "--out", default=None, help="split file to write (default: splits/<dataset>-<protocol>-s<seed>.json)"
    )


def _metadata_csv(root: Path) -> Path:
    for name in ("meta_data.csv", "metadata.csv"):
        if (root / name).is_file():
            return root / name
    return root / "meta_data.csv"  # read_fakeavceleb_metadata names the missing file in its error


def run(args: argparse.Namespace) -> int:
    root = Path(args.data)
    table = read_fakeavceleb_metadata(_metadata_csv(root) if root.is_dir() else root)
    root = root if root.is_dir() else root.parent
    for line in table.report:
        print(f"metadata: {line}")
    split = make_splits(
        table.records,
        args.protocol,
        args.seed,
        args.dataset,
        folds=args.folds,
        train_fraction=args.train_fraction,
        root=root,
    )
    out = Path(args.out or f"splits/{args.dataset}-{args.protocol}-s{args.seed}.json")
    split.save(out)
    print(f"{table.rows_read} metadata rows -> {len(table.records)} videos ({len(table.report)} rows fixed or dropped)")
    for fold in split.folds:
        print(f"  {fold['name']:>10s}: {len(fold['train']):6d} train  {len(fold['test']):6d} test")
    if split.unused:
        print(f"  {split.unused} videos of types outside the protocol are not used")
    print(f"wrote {out}  sha256 {split.sha256}")
    return 0
