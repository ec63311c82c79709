"""``avfused prepare``: decode a dataset once into a shard cache of fixed-size clips for fast training."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
from pathlib import Path

from avfused.checkpoint import atomic_write_bytes
from avfused.config import ModelConfig
from avfused.data.cache import AUDIO_DTYPES, prepare_cache
from avfused.data.datasets import DATASETS, load_records, split_by_identity
from avfused.data.decode import PAD_MODES, ClipSpec
from avfused.data.faces import DETECTORS

HELP = "decode a dataset into a resumable cache of fixed-size clips (uint8 frames, int16/float16 audio)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default="data/synthetic", help="dataset root folder (default: `avfused synth` output)"
    )
    parser.add_argument("--dataset", default="synthetic", choices=sorted(DATASETS), help="dataset layout")
    parser.add_argument("--out", default="data/cache", help="cache folder (re-run with the same options to resume)")
    parser.add_argument(
        "--preset", default="small", choices=["small", "large", "demo"], help="clip size of this preset"
    )
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: the preset's)")
    parser.add_argument("--image-size", type=int, default=None, help="frame side in pixels (default: the preset's)")
    parser.add_argument("--seconds", type=float, default=None, help="clip length in seconds (default: the preset's)")
    parser.add_argument(
        "--faces",
        default="none",
        choices=["none", *DETECTORS],
        help="face crop detector; 'none' for face-centred videos (centre square crop)",
    )
    parser.add_argument("--face-margin", type=float, default=0.25, help="margin added around the face box, per side")
    parser.add_argument("--pad", default="hold", choices=PAD_MODES, help="how clips shorter than a window are padded")
    parser.add_argument("--windows-per-file", type=int, default=1, help="clips per video, spread over its length")
    parser.add_argument("--audio-dtype", default="int16", choices=sorted(AUDIO_DTYPES), help="stored audio type")
    parser.add_argument("--shard-size", type=int, default=256, help="videos per shard")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="decoding processes")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the identity split stored with each clip")
    parser.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"),
        help="shares of identities per split (a dataset's own split is kept)",
    )
    parser.add_argument("--limit", type=int, default=0, help="only the first N videos (0: all)")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing cache in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def command_line(args: argparse.Namespace) -> str:
    """The ``avfused prepare`` command that redoes this cache (every option that shapes it), for error messages."""
    options = [
        ("--data", args.data), ("--dataset", args.dataset), ("--out", args.out), ("--preset", args.preset),
        ("--frames", args.frames), ("--image-size", args.image_size), ("--seconds", args.seconds),
        ("--faces", args.faces), ("--face-margin", args.face_margin), ("--pad", args.pad),
        ("--windows-per-file", args.windows_per_file), ("--audio-dtype", args.audio_dtype),
        ("--shard-size", args.shard_size), ("--split-seed", args.split_seed), ("--limit", args.limit or None),
    ]  # fmt: skip
    words = ["avfused", "prepare"]
    for flag, value in options:
        if value is not None:
            words += [flag, str(value)]
    words += ["--fractions", *map(str, args.fractions)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    config = ModelConfig.preset(args.preset)
    overrides = {
        k: v
        for k, v in (("frames", args.frames), ("image_size", args.image_size), ("seconds", args.seconds))
        if v is not None
    }
    spec = ClipSpec.from_config(config, faces=args.faces, face_margin=args.face_margin, pad=args.pad, **overrides)
    records = load_records(args.dataset, args.data)
    if args.limit:
        records = records[: args.limit]
    splits = split_by_identity(records, tuple(args.fractions), args.split_seed, respect_given=True)
    split_of = {id(r): name for name, rs in splits.items() for r in rs}
    records = [dataclasses.replace(r, split=split_of[id(r)]) for r in records]
    report = prepare_cache(
        records,
        args.out,
        spec,
        shard_size=args.shard_size,
        workers=args.workers,
        audio_dtype=args.audio_dtype,
        windows_per_file=args.windows_per_file,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        command=command_line(args),
    )
    print(
        f"{report.files_in} files in: {report.files_cached} cached ({report.clips} clips) + "
        f"{report.files_skipped} skipped; {report.shards} shards ({report.shards_reused} reused) in {report.out_dir}"
    )
    for line in report.redone:
        print(f"  decoded again: {line}")
    for item in report.skipped:
        print(f"  skipped {item['path']}: {item['error']}: {item['reason']}")
    atomic_write_bytes(Path(args.out) / "skipped.json", json.dumps(report.skipped, indent=1).encode())
    return 0
