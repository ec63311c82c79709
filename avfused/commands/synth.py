"""``avfused synth``: write the built-in synthetic audio-visual deepfake benchmark (no download)."""

from __future__ import annotations

import argparse
import os

from avfused.data.synthetic import generate

HELP = "generate the synthetic talking-face deepfake benchmark (mp4 + meta_data.csv, FakeAVCeleb layout)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/synthetic", help="folder to write the videos and meta_data.csv into")
    parser.add_argument("--identities", type=int, default=16, help="number of synthetic people")
    parser.add_argument("--clips-per-identity", type=int, default=10, help="videos per person (40%% real)")
    parser.add_argument("--seed", type=int, default=0, help="seed: the same seed writes the same benchmark")
    parser.add_argument("--size", type=int, default=96, help="frame side in pixels (even)")
    parser.add_argument("--fps", type=float, default=25.0, help="video frame rate")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each video in seconds")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate in Hz")
    parser.add_argument(
        "--splits",
        type=float,
        nargs=3,
        default=(0.6, 0.2, 0.2),
        metavar=("TRAIN", "VAL", "TEST"),
        help="shares of identities per split (written to splits.json)",
    )
    parser.add_argument(
        "--silence-cue",
        action="store_true",
        help="fakes start with 0.2-0.5 s of digital silence (FakeAVCeleb's shortcut; see eval --baseline silence)",
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (0: in this one)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    summary = generate(
        args.out,
        num_identities=args.identities,
        clips_per_identity=args.clips_per_identity,
        seed=args.seed,
        fps=args.fps,
        size=args.size,
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        splits=tuple(args.splits),
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        silence_cue=args.silence_cue,
    )
    counts = ", ".join(f"{k} {v}" for k, v in summary.categories.items())
    print(
        f"wrote {summary.clips} clips of {summary.identities} identities to {summary.out_dir} "
        f"in {summary.seconds_taken:.1f} s ({counts})"
    )
    return 0
