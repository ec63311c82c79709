"""``avfused eval CKPT``: ACC / AUC / EER / AP of each head, overall, per category and per method.

The data defaults to what the checkpoint was trained on (its test split); ``--data`` / ``--dataset``
evaluate elsewhere. ``--test-methods`` keeps the real videos and the fakes of those methods only
(cross-manipulation: train with ``--train-methods A B``, test on unseen ``--test-methods C``).
Writes a table to the terminal, ``<out>/eval-<split>.json`` (metrics and per-video scores) and
``<out>/roc-<split>.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

HELP = "evaluate a checkpoint: ACC, AUC, EER, AP per head, category and method; JSON and a ROC plot"
log = logging.getLogger("avfused")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint file (best.safetensors / last.safetensors)")
    parser.add_argument("--data", default=None, help="dataset root or prepared cache (default: the training data)")
    parser.add_argument("--dataset", default=None, help="layout of --data (default: the checkpoint's, or fakeavceleb)")
    parser.add_argument(
        "--split", default="test", choices=["train", "val", "test", "all"], help="which split of the data to score"
    )
    parser.add_argument(
        "--split-fractions", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
        help="identity shares per split where the data fixes none (default: the checkpoint's)",
    )  # fmt: skip
    parser.add_argument("--split-seed", type=int, default=None, help="identity split seed (default: the checkpoint's)")
    parser.add_argument(
        "--test-methods", nargs="+", default=None, metavar="METHOD",
        help="score real videos and the fakes of these methods only (cross-manipulation protocol)",
    )  # fmt: skip
    parser.add_argument(
        "--train-methods", nargs="+", default=None, metavar="METHOD",
        help="record the methods trained on (default: the checkpoint's); with --test-methods, refuse overlaps",
    )  # fmt: skip
    parser.add_argument("--faces", default=None, help="face crops (default: as in training)")
    parser.add_argument("--threshold", type=float, default=0.5, help="fixed decision threshold for ACC")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--backend", default="auto", help="kernels: auto, torch, triton, cuda")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")
    parser.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto", help="bf16 autocast (auto: GPUs)")
    parser.add_argument("--out", default=None, help="folder for the JSON and the ROC PNG (default: the checkpoint's)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the ROC PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: one per idle core, from the load average)"
    )


def run(args: argparse.Namespace) -> int:
    from avfused.errors import AvfusedError

    try:
        return _run(args)
    except AvfusedError as error:  # a named, explained error: one line, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from avfused.checkpoint import load_checkpoint, load_model
    from avfused.data.decode import ClipSpec
    from avfused.errors import ConfigError
    from avfused.evaluate import format_table, predict, report, save_roc_plot, video_level
    from avfused.training.data import DataSource, split_datasets
    from avfused.training.threads import set_threads

    set_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint)
    trained_on = checkpoint.state.get("data") or {}
    data_path = args.data or trained_on.get("path")
    if data_path is None:
        raise ConfigError(f"{args.checkpoint} does not record its training data; pass --data PATH --dataset NAME")
    same_data = data_path == trained_on.get("path")
    dataset = args.dataset or (trained_on.get("dataset") if same_data else None) or "fakeavceleb"
    fractions = tuple(args.split_fractions or trained_on.get("fractions") or (0.7, 0.15, 0.15))
    seed = args.split_seed if args.split_seed is not None else trained_on.get("split_seed", 0)
    train_methods = args.train_methods or trained_on.get("train_methods")
    if args.test_methods and train_methods:
        seen = {m.lower() for m in train_methods} & {m.lower() for m in args.test_methods}
        if seen:
            raise ConfigError(f"test methods {sorted(seen)} were trained on; cross-manipulation needs unseen ones")

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    amp = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
    model = load_model(args.checkpoint, args.backend, device)
    spec = ClipSpec.from_config(checkpoint.config, faces=args.faces or trained_on.get("faces", "none"))
    source = DataSource(data_path, dataset, seed, fractions)
    names = ("train", "val", "test") if args.split == "all" else (args.split,)
    datasets = split_datasets(
        source, spec, names, dict.fromkeys(names, args.test_methods), "no", args.workers, not args.no_progress
    )
    predictions = None
    for name in names:
        part = predict(model, datasets[name], args.batch_size, device, amp, args.workers, not args.no_progress)
        predictions = part if predictions is None else _concat(predictions, part)
    if predictions is None or len(predictions) == 0:
        raise ConfigError(f"no readable clips in the {args.split} split of {data_path}")
    videos = video_level(predictions)
    result = report(videos, args.threshold)
    result.update(
        {
            "checkpoint": str(args.checkpoint),
            "data": {"path": data_path, "dataset": dataset, "split": args.split, "fractions": list(fractions)},
            "train_methods": train_methods,
            "test_methods": args.test_methods,
            "videos_scored": videos.to_rows(),
        }
    )
    print(f"{args.checkpoint}: {len(videos)} videos of the {args.split} split of {data_path} ({dataset})")
    print(format_table(result))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"eval-{args.split}.json"
    json_path.write_text(json.dumps(_finite(result), indent=2))
    print(f"wrote {json_path}")
    if not args.no_plot:
        png = out / f"roc-{args.split}.png"
        save_roc_plot(videos, str(png), title=f"{Path(args.checkpoint).name} on {args.split}")
        print(f"wrote {png}")
    return 0


def _concat(a, b):
    import numpy as np

    from avfused.evaluate import Predictions

    return Predictions(
        a.path + b.path,
        a.category + b.category,
        a.method + b.method,
        np.concatenate([a.label, b.label]),
        np.concatenate([a.visual_label, b.visual_label]),
        np.concatenate([a.audio_label, b.audio_label]),
        {h: np.concatenate([a.scores[h], b.scores[h]]) for h in a.scores},
    )


def _finite(value):
    """NaN (a metric undefined for a one-class group) -> None, so the JSON is standard."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
