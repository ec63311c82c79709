"""``avfused eval CKPT...``: ACC / AUC / EER / AP of each head, overall, per category and per method.

The data defaults to what the checkpoint was trained on: its data, its split file and fold (or identity
fractions), its silence-cue option; ``--subset`` picks train / val / test (default) / all of it. A split
file (``--split``) other than the one the checkpoint was trained on is refused (``--allow-other-split``).
Scores are per video: the mean over every clip-length window of the video (``--windows first``: the
first window only). ``--test-methods`` keeps the real videos and the fakes of those methods only
(cross-manipulation: train with ``--train-methods A B``, test on unseen ``--test-methods C``).
ACC is given at the fixed ``--threshold`` (0.5) and, beside it, at the threshold each head was calibrated to on
the validation split in training (ACC@cal; see avfused.calibration): neither is tuned on the test set. A
checkpoint without calibrated thresholds (written before avfused stored them) shows ACC@0.5 only, with a note.
Writes a table to the terminal, ``<out>/eval-<subset>.json`` (metrics and per-video scores) and
``<out>/roc-<subset>.png``; ``<out>`` defaults to the checkpoint's folder.
On the CPU the model runs as its inference-folded copy (avfused.inference; ``--no-fold``: as trained).

Several checkpoints (one per fold of a split file): each is scored on its own fold, then a table of the
mean ± std over the folds; ``<out>/eval-folds-<subset>.json`` (default: the checkpoints' common folder)
holds every fold's result and the aggregate.

Refused (one error, exit status 2): clips that cannot be read (``--skip-unreadable`` scores the rest and
lists them under "skipped"), a split whose train, val and test share files or identities
(``--allow-split-leak``, recorded under "split_leak"), a threshold outside [0, 1], a device or forced
backend that is not here.

``--baseline silence`` (no checkpoint): each video scored by its leading silence alone (see
avfused.evaluate.predict_silence), to show how much a dataset leaks; writes ``<out>/baseline-silence-<subset>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from avfused.training.data import SILENCE_CUE_MODES

HELP = "evaluate checkpoints (mean ± std over folds) or the silence baseline: ACC, AUC, EER, AP per head and group"
log = logging.getLogger("avfused")
SUBSETS = ("train", "val", "test", "all")
# the baseline decodes one small frame per video: only the audio counts
BASELINE_FRAMES, BASELINE_IMAGE_SIZE = 1, 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoints", nargs="*", metavar="CKPT",
        help="checkpoint file(s) (best.safetensors / last.safetensors); several: one per fold, then mean ± std",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", choices=["silence"], default=None,
        help="no checkpoint: score each video by its leading silence alone (needs --data)",
    )  # fmt: skip
    parser.add_argument("--data", default=None, help="dataset root or prepared cache (default: the training data)")
    parser.add_argument("--dataset", default=None, help="layout of --data (default: the checkpoint's, or fakeavceleb)")
    parser.add_argument(
        "--split", default=None, metavar="FILE",
        help="a split file of `avfused splits` (default: the one the checkpoint was trained on, if any)",
    )  # fmt: skip
    parser.add_argument(
        "--fold", default=None, help="fold of the split file (default: the checkpoint's; the baseline: the first)"
    )
    parser.add_argument(
        "--allow-other-split", action="store_true",
        help="evaluate on a split file other than the one the checkpoint was trained on (test files may be seen)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-split-leak", action="store_true",
        help="score although train, val and test share files or identities (refused otherwise; in the JSON)",
    )  # fmt: skip
    parser.add_argument(
        "--skip-unreadable", action="store_true",
        help="score the videos that read and list the others in the JSON (refused otherwise: the figures would "
        "silently leave them out)",
    )  # fmt: skip
    parser.add_argument("--subset", default="test", choices=SUBSETS, help="which part of the data to score")
    parser.add_argument(
        "--split-fractions", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
        help="identity shares per split where the data fixes none (default: the checkpoint's)",
    )  # fmt: skip
    parser.add_argument("--split-seed", type=int, default=None, help="identity split seed (default: the checkpoint's)")
    parser.add_argument(
        "--silence-cue", choices=SILENCE_CUE_MODES, default=None,
        help="remove the leading-silence cue: trim, or trim + random 0-0.5 s per file (default: as in training)",
    )  # fmt: skip
    parser.add_argument(
        "--clip-seconds", type=float, default=3.0, help="baseline: seconds decoded from the start of each video"
    )
    parser.add_argument(
        "--test-methods", nargs="+", default=None, metavar="METHOD",
        help="score real videos and the fakes of these methods only (cross-manipulation protocol)",
    )  # fmt: skip
    parser.add_argument(
        "--train-methods", nargs="+", default=None, metavar="METHOD",
        help="record the methods trained on (default: the checkpoint's); with --test-methods, refuse overlaps",
    )  # fmt: skip
    parser.add_argument(
        "--windows", choices=["all", "first"], default="all",
        help="score every clip-length window of each video and average them per video, or the first only",
    )  # fmt: skip
    parser.add_argument("--faces", default=None, help="face crops (default: as in training)")
    parser.add_argument(
        "--threshold", type=float, default=0.5,
        help="fixed decision threshold for ACC (ACC@cal beside it uses the checkpoint's calibrated one)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32, help="clips per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--backend", default="auto", help="kernels: auto, torch, triton, cuda")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")
    parser.add_argument(
        "--no-fold", action="store_true",
        help="run the model as trained; by default CPU inference runs its folded copy (avfused.inference)",
    )  # fmt: skip
    parser.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto", help="bf16 autocast (auto: GPUs)")
    parser.add_argument(
        "--out", default=None,
        help="folder for the JSON and the ROC PNG (default: the checkpoint's; several: the folds' JSON, default "
        "their common folder; baseline: runs/baseline)",
    )  # fmt: skip
    parser.add_argument("--no-plot", action="store_true", help="do not write the ROC PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: one per idle core, from the load average)"
    )


def run(args: argparse.Namespace) -> int:
    from avfused.errors import ConfigError
    from avfused.evaluate import check_threshold
    from avfused.training.threads import set_threads

    check_threshold(args.threshold)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    set_threads(args.threads)
    if args.baseline:
        if args.checkpoints:
            raise ConfigError("--baseline scores without a checkpoint; give checkpoints or --baseline, not both")
        return _run_baseline(args)
    if not args.checkpoints:
        raise ConfigError("give a checkpoint to evaluate, or --baseline silence --data ROOT")
    if args.fold is not None and len(args.checkpoints) > 1:
        raise ConfigError("--fold is for one checkpoint; several are each scored on the fold they were trained on")
    device, amp = _device(args)
    several = len(args.checkpoints) > 1
    results = []
    for path in args.checkpoints:
        out = Path(path).parent if several or not args.out else Path(args.out)
        results.append(_evaluate_checkpoint(path, args, device, amp, out))
    if several:
        _report_folds(results, args)
    return 0


def _device(args: argparse.Namespace):
    from avfused.backends import resolve_backend
    from avfused.evaluate import resolve_device

    device = resolve_device(args.device)
    resolve_backend(args.backend, device)  # a forced backend that cannot run: one named error before any file
    return device, args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")


def _subsets(subset: str) -> tuple[str, ...]:
    return ("train", "val", "test") if subset == "all" else (subset,)


def _check_same_split(source, trained_on: dict, checkpoint: str, allow: bool) -> None:
    """Refuse a split file other than the checkpoint's: its test folds may hold the training identities."""
    from avfused.errors import SplitMismatchError

    recorded = trained_on.get("split_sha256")
    if allow or source.split_sha256 == recorded:
        return
    trained = f"{trained_on.get('split_file')} (sha256 {recorded})" if recorded else "identity fractions, no split file"
    raise SplitMismatchError(
        source.split_file,
        f"sha256 {source.split_sha256} is not the split {checkpoint} was trained on: {trained}; its test files "
        "may be training files (--allow-other-split evaluates anyway)",
    )


def _checkpoint_source(checkpoint: str, trained_on: dict, args: argparse.Namespace):
    """The data to score: --data / --split ... where given, else what the checkpoint was trained on."""
    from avfused.errors import ConfigError
    from avfused.training.data import DataSource, fold_source

    data_path = args.data or trained_on.get("path")
    if data_path is None:
        raise ConfigError(f"{checkpoint} does not record its training data; pass --data PATH --dataset NAME")
    same_data = data_path == trained_on.get("path")
    dataset = args.dataset or (trained_on.get("dataset") if same_data else None) or "fakeavceleb"
    seed = args.split_seed if args.split_seed is not None else trained_on.get("split_seed", 0)
    split_file = args.split or trained_on.get("split_file")
    if split_file is None:
        fractions = tuple(args.split_fractions or trained_on.get("fractions") or (0.7, 0.15, 0.15))
        return DataSource(data_path, dataset, seed, fractions, allow_split_leak=args.allow_split_leak)
    fold = args.fold or trained_on.get("fold")
    source = fold_source(data_path, dataset, seed, split_file, fold, args.allow_split_leak)
    _check_same_split(source, trained_on, checkpoint, args.allow_other_split)
    return source


def _describe(source, subset: str, silence_cue: str) -> str:
    """The lines above a table: which data, which split (its sha256), which silence-cue option."""
    where = f"subset {subset} of {source.path} ({source.dataset})"
    if source.split_file:
        split = f"split {source.split_file} fold {source.fold} sha256 {source.split_sha256}"
    else:
        fractions = "/".join(map(str, source.fractions))
        split = f"split by identity (the dataset's own split, else fractions {fractions}), seed {source.split_seed}"
    return f"{where}\n{split}\nsilence cue: {silence_cue}"


def _evaluate_checkpoint(checkpoint_path: str, args: argparse.Namespace, device, amp: bool, out: Path) -> dict:
    from avfused.calibration import decision_threshold
    from avfused.checkpoint import load_checkpoint, load_model
    from avfused.data.decode import ClipSpec
    from avfused.errors import ConfigError
    from avfused.evaluate import predict
    from avfused.inference import inference_model
    from avfused.training.data import split_datasets

    checkpoint = load_checkpoint(checkpoint_path)
    trained_on = checkpoint.state.get("data") or {}
    source = _checkpoint_source(checkpoint_path, trained_on, args)
    train_methods = args.train_methods or trained_on.get("train_methods")
    if args.test_methods and train_methods:
        seen = {m.lower() for m in train_methods} & {m.lower() for m in args.test_methods}
        if seen:
            raise ConfigError(f"test methods {sorted(seen)} were trained on; cross-manipulation needs unseen ones")
    silence_cue = args.silence_cue or trained_on.get("silence_cue", "keep")
    model = inference_model(load_model(checkpoint_path, args.backend, device), fold=False if args.no_fold else None)
    spec = ClipSpec.from_config(checkpoint.config, faces=args.faces or trained_on.get("faces", "none"))
    names = _subsets(args.subset)
    methods = dict.fromkeys(names, args.test_methods)
    progress = not args.no_progress
    datasets = split_datasets(
        source, spec, names, methods, "no", args.workers, progress, silence_cue, all_windows=args.windows == "all"
    )
    parts = [predict(model, datasets[n], args.batch_size, device, amp, args.workers, progress) for n in names]
    extra = {"checkpoint": str(checkpoint_path), "train_methods": train_methods, "calibration": checkpoint.calibration}
    calibrated = (checkpoint.calibration or {}).get("thresholds")
    if not calibrated:
        print(f"note: {checkpoint_path}: ACC at the fixed threshold only; {decision_threshold(checkpoint).source}")
    return _finish(parts, source, silence_cue, args, out, checkpoint_path, extra, calibrated=calibrated)


def _finish(
    parts: list, source, silence_cue: str, args, out: Path, name: str, extra: dict, heads=None, calibrated=None
) -> dict:
    """Pool the parts per video, print the table under its header, write the JSON (and ROC PNG)."""
    from avfused.checkpoint import atomic_write_bytes
    from avfused.errors import ConfigError, UnreadableFilesError
    from avfused.evaluate import HEADS, Predictions, format_table, report, save_roc_plot, video_level
    from avfused.metrics import json_safe

    heads = heads or HEADS
    windows = "first" if args.baseline else args.windows  # the silence cue lives in a video's first window
    predictions = Predictions.concat(parts)
    skipped = predictions.skipped
    if skipped and not args.skip_unreadable:
        raise UnreadableFilesError(
            source.path,
            f"{len(skipped)} clip(s) of the {args.subset} part could not be read (e.g. {skipped[0]}); the figures "
            "would leave them out: fix or remove them, or --skip-unreadable scores the rest and lists them",
        )
    if len(predictions) == 0:
        raise ConfigError(f"no readable clips in the {args.subset} part of {source.path}")
    videos = video_level(predictions)
    result = report(videos, args.threshold, heads, calibrated)
    result.update(
        {
            **extra,
            "split_sha256": source.split_sha256,
            "fold": source.fold,
            "data": {**source.to_dict(), "subset": args.subset, "silence_cue": silence_cue, "windows": windows},
            "test_methods": args.test_methods,
            "skipped": skipped,  # "path: reason" of every clip that could not be read (--skip-unreadable)
            "videos_scored": videos.to_rows(),
        }
    )
    if source.allow_split_leak:
        result["split_leak"] = source.leaks()
    print(
        f"{name}: {len(videos)} videos ({len(predictions)} windows, {windows}), "
        f"{_describe(source, args.subset, silence_cue)}"
    )
    if skipped:
        print(f"warning: {len(skipped)} clip(s) could not be read and are left out (listed in the JSON)")
    if result.get("split_leak", {}).get("files") or result.get("split_leak", {}).get("identities"):
        leak = result["split_leak"]
        print(f"warning: the split leaks ({len(leak['files'])} files, {len(leak['identities'])} identities shared); "
              "accepted by --allow-split-leak")  # fmt: skip
    print(format_table(result, heads))
    out.mkdir(parents=True, exist_ok=True)
    stem = f"baseline-silence-{args.subset}" if args.baseline else f"eval-{args.subset}"
    json_path = out / f"{stem}.json"
    atomic_write_bytes(json_path, json.dumps(json_safe(result), indent=2).encode())  # a full disk: one error line
    print(f"wrote {json_path}")
    if not args.no_plot:
        png = out / f"roc-{args.subset}.png" if not args.baseline else out / f"{stem}.png"
        try:
            save_roc_plot(videos, str(png), title=f"{Path(name).name} on {args.subset}")
            print(f"wrote {png}")
        except ImportError:  # matplotlib is an optional extra; the metrics above do not need it
            print("no ROC plot: matplotlib is not installed (pip install 'avfused[plot]')")
    return result


def _report_folds(results: list[dict], args: argparse.Namespace) -> None:
    """Print the mean ± std table over the checkpoints' folds and write every result beside it."""
    from avfused.checkpoint import atomic_write_bytes
    from avfused.folds import aggregate_folds, format_mean_std_table
    from avfused.metrics import json_safe

    aggregate = aggregate_folds(results)
    shas = sorted({r["split_sha256"] or "none" for r in results})
    folds = ", ".join(str(r["fold"]) for r in results)
    print(f"\nmean ± std over {len(results)} folds ({folds}) of split sha256 {', '.join(shas)}")
    if len(shas) > 1:
        log.warning("the checkpoints were scored on different splits: their mean mixes protocols")
    print(format_mean_std_table(aggregate))
    checkpoints = [r["checkpoint"] for r in results]
    out = Path(args.out) if args.out else Path(os.path.commonpath([str(Path(c).resolve().parent) for c in checkpoints]))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"eval-folds-{args.subset}.json"
    summary = {"split_sha256": shas, "checkpoints": checkpoints, "mean_std": aggregate, "folds": results}
    atomic_write_bytes(path, json.dumps(json_safe(summary), indent=2).encode())
    print(f"wrote {path}")


def _baseline_source(args: argparse.Namespace):
    from avfused.training.data import DataSource, fold_source

    dataset = args.dataset or "fakeavceleb"
    seed = args.split_seed or 0
    if args.split:
        source = fold_source(args.data, dataset, seed, args.split, args.fold, args.allow_split_leak)
        if args.fold is None:
            log.info("split %s: fold %s, the first (--fold picks another)", args.split, source.fold)
        return source
    fractions = tuple(args.split_fractions or (0.7, 0.15, 0.15))
    return DataSource(args.data, dataset, seed, fractions, allow_split_leak=args.allow_split_leak)


def _run_baseline(args: argparse.Namespace) -> int:
    from avfused.data.decode import ClipSpec
    from avfused.errors import ConfigError
    from avfused.evaluate import predict_silence
    from avfused.training.data import split_datasets

    if args.data is None:
        raise ConfigError("--baseline silence needs --data ROOT (and --dataset NAME unless fakeavceleb)")
    source = _baseline_source(args)
    spec = ClipSpec(frames=BASELINE_FRAMES, image_size=BASELINE_IMAGE_SIZE, seconds=args.clip_seconds)
    silence_cue = args.silence_cue or "keep"
    names = _subsets(args.subset)
    methods = dict.fromkeys(names, args.test_methods)
    progress = not args.no_progress
    datasets = split_datasets(source, spec, names, methods, "no", args.workers, progress, silence_cue)
    parts = [predict_silence(datasets[n], spec.sample_rate, args.batch_size, args.workers, progress) for n in names]
    out = Path(args.out or "runs/baseline")
    extra = {"baseline": "silence", "clip_seconds": args.clip_seconds}
    _finish(parts, source, silence_cue, args, out, "silence baseline", extra, heads=("clip",))
    return 0
