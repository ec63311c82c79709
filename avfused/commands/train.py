"""``avfused train``: train a detector; with no --data, on the built-in synthetic benchmark.

avfused train --out runs/demo                                  synthesise data, train the demo preset
avfused train --out runs/x --data ROOT --dataset fakeavceleb   a real layout (or a prepared cache)
torchrun --nproc_per_node=N -m avfused train ...               N processes, DDP (NCCL / gloo)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from avfused.errors import ConfigError, OutputExistsError
from avfused.training.augment import AugmentConfig
from avfused.training.data import SILENCE_CUE_MODES
from avfused.training.loop import LAST, RUN_FILES, TrainConfig

HELP = "train a detector (on the built-in synthetic benchmark when no --data is given)"
log = logging.getLogger("avfused")

# the built-in benchmark the demo trains on (see avfused.data.synthetic.generate)
SYNTH_DEFAULTS = {"identities": 64, "clips_per_identity": 8}
# Recipe defaults, and the demo's (no --data): about 300 steps on ~300 clips instead of the
# paper's many epochs, so a shorter schedule with a larger step (measured in the README).
RECIPE = {"epochs": 50, "batch_size": 16, "lr": 5e-4}
DEMO = {"epochs": 8, "batch_size": 8, "lr": 2e-3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--out", default="runs/train", help="folder for checkpoints, logs and metrics")
    data.add_argument(
        "--data", default=None, help="dataset root or `avfused prepare` cache; none: synthesise <out>/synthetic"
    )
    data.add_argument(
        "--dataset",
        default=None,
        help="layout of --data: fakeavceleb when not given; synthetic, dfdc, dftimit, lavdf, avdeepfake1m",
    )
    data.add_argument(
        "--split-fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
        help="shares of identities per split, where the data does not fix its own split and no --split is given",
    )  # fmt: skip
    data.add_argument(
        "--split", default=None, metavar="FILE",
        help="a split file of `avfused splits` (paths relative to --data): train on a fold's train files, "
        "15%% of its identities held out for validation",
    )  # fmt: skip
    data.add_argument("--fold", default=None, help="fold of --split, by name or index (default: the first)")
    data.add_argument(
        "--allow-split-leak", action="store_true",
        help="train although train, val and test share files or identities (refused otherwise; recorded)",
    )  # fmt: skip
    data.add_argument(
        "--split-seed", type=int, default=0, help="seed of the identity split (with --split: of the validation share)"
    )
    data.add_argument(
        "--silence-cue", choices=SILENCE_CUE_MODES, default="keep",
        help="remove the leading-silence shortcut from the audio: trim it, or trim and add 0-0.5 s at random",
    )  # fmt: skip
    data.add_argument(
        "--train-methods", nargs="+", default=None, metavar="METHOD",
        help="train on real clips and these manipulation methods only (cross-manipulation protocol)",
    )  # fmt: skip
    data.add_argument("--faces", default="none", help="face crops: none (centre square), auto, haar, skin")
    data.add_argument(
        "--in-memory", choices=["auto", "yes", "no"], default="auto",
        help="decode every clip once up front (auto: when it fits in 3 GiB)",
    )  # fmt: skip
    data.add_argument("--workers", type=int, default=0, help="data-loading processes (0: in the main process)")
    data.add_argument(
        "--synth-identities", type=int, default=SYNTH_DEFAULTS["identities"], help="synthetic benchmark: people"
    )
    data.add_argument(
        "--synth-clips", type=int, default=SYNTH_DEFAULTS["clips_per_identity"], help="synthetic: videos per person"
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset", choices=["small", "large", "demo"], default=None,
        help="model preset (default: demo on the synthetic data, small otherwise)",
    )  # fmt: skip
    model.add_argument(
        "--model-config", default=None, metavar="JSON",
        help="a JSON file of ModelConfig fields (e.g. {\"image_size\": 128}) applied over the preset",
    )  # fmt: skip
    model.add_argument("--backend", default="auto", help="kernels: auto, torch, triton, cuda")
    model.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")

    recipe = parser.add_argument_group("recipe (docs/design.md, section 1)")
    recipe.add_argument(
        "--epochs", type=int, default=None, help=f"epochs (default: {RECIPE['epochs']}; demo {DEMO['epochs']})"
    )
    recipe.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (0: no cap)")
    recipe.add_argument(
        "--batch-size", type=int, default=None,
        help=f"global batch, split over the processes (default: {RECIPE['batch_size']}; demo {DEMO['batch_size']})",
    )  # fmt: skip
    recipe.add_argument(
        "--lr", type=float, default=None, help=f"AdamW peak learning rate (default: {RECIPE['lr']}; demo {DEMO['lr']})"
    )
    recipe.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    recipe.add_argument("--warmup", type=float, default=0.1, help="share of the steps spent in linear warm-up")
    recipe.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing of every CE")
    recipe.add_argument("--mismatch-weight", type=float, default=0.25, help="weight of the mismatched-pair loss")
    recipe.add_argument("--probe-weight", type=float, default=1.0, help="weight of the statistics probes' loss")
    recipe.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (0: off)")
    recipe.add_argument("--no-augment", action="store_true", help="switch off JPEG, time stretch and flips")
    recipe.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto", help="bf16 autocast (auto: GPUs)")
    recipe.add_argument("--seed", type=int, default=0, help="seed of weights, data order and augmentation")

    run = parser.add_argument_group("run")
    run.add_argument(
        "--resume", nargs="?", const="auto", default=None, metavar="CKPT",
        help="continue from CKPT (no value: <out>/last.safetensors, or from step 0 when there is none yet)",
    )  # fmt: skip
    run.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out (refused otherwise)"
    )
    run.add_argument("--save-every", type=int, default=0, help="also write last.safetensors every N steps")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: one per idle core, from the load average)"
    )


def _synthesise(args: argparse.Namespace, out: Path) -> Path:
    """Write the synthetic benchmark into <out>/synthetic unless one with the same settings is there."""
    from avfused.data.synthetic import generate

    folder = out / "synthetic"
    wanted = {"num_identities": args.synth_identities, "clips_per_identity": args.synth_clips, "seed": args.seed}
    info = folder / "synthetic.json"
    if info.is_file():
        have = json.loads(info.read_text())
        if all(have.get(k) == v for k, v in wanted.items()) and (folder / "meta_data.csv").is_file():
            log.info("using the synthetic benchmark already in %s", folder)
            return folder
    log.info("writing the synthetic benchmark to %s", folder)
    summary = generate(
        folder,
        num_identities=args.synth_identities,
        clips_per_identity=args.synth_clips,
        seed=args.seed,
        workers=min(2, os.cpu_count() or 1),
        overwrite=True,
        progress=not args.no_progress,
    )
    log.info("synthesised %d clips in %.1f s", summary.clips, summary.seconds_taken)
    return folder


def load_model_overrides(path: str | None) -> dict:
    """The ModelConfig fields of a --model-config JSON file; a named error for a missing file, broken JSON or
    an unknown field."""
    from avfused.config import ModelConfig

    if path is None:
        return {}
    try:
        overrides = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--model-config {path}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--model-config {path}: not valid JSON ({exc})") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"--model-config {path}: expected a JSON object of ModelConfig fields, got a "
                          f"{type(overrides).__name__}")  # fmt: skip
    known = set(ModelConfig().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"--model-config {path}: unknown field(s) {unknown}; ModelConfig has {sorted(known)}")
    return overrides


def _resume_point(args: argparse.Namespace, out: Path) -> Path | None:
    """The checkpoint to continue from: --resume CKPT, or <out>/last.safetensors (none yet: step 0)."""
    if args.resume is None:
        return None
    if args.resume != "auto":
        return Path(args.resume)
    if (out / LAST).is_file():
        return out / LAST
    others = [name for name in RUN_FILES if (out / name).exists()]
    if others and not args.overwrite:  # e.g. a run killed between its first best and last: nothing to resume
        raise OutputExistsError(out, f"holds {', '.join(others)} but no {LAST} to resume from; --overwrite "
                                "starts the run again")  # fmt: skip
    log.warning("--resume: no %s yet, so training starts at step 0", out / LAST)
    return None


def _data_source(args: argparse.Namespace, data_path: str, dataset: str):
    """Where the clips come from: a fold of --split, or identity fractions; absolute paths, so `avfused eval
    CKPT` finds the data and the split file from any folder."""
    from avfused.training.data import DataSource, fold_source

    path = str(Path(data_path).resolve())
    if args.split is None:
        return DataSource(path, dataset, args.split_seed, tuple(args.split_fractions),
                          allow_split_leak=args.allow_split_leak)  # fmt: skip
    source = fold_source(path, dataset, args.split_seed, args.split, args.fold, args.allow_split_leak)
    chosen = "given by --fold" if args.fold is not None else "the first; --fold picks another"
    log.info("split %s: fold %s (%s), sha256 %s", args.split, source.fold, chosen, source.split_sha256)
    return source


def run(args: argparse.Namespace) -> int:
    from avfused.checkpoint import load_checkpoint
    from avfused.config import ModelConfig
    from avfused.data.decode import ClipSpec
    from avfused.training.data import split_datasets
    from avfused.training.distributed import Context
    from avfused.training.loop import Trainer, claim_run_folder
    from avfused.training.threads import set_threads

    set_threads(args.threads)
    context = Context.from_environment(None if args.device == "auto" else args.device)
    if not context.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    out = Path(args.out)
    resume = _resume_point(args, out)
    overrides = load_model_overrides(args.model_config)
    if context.is_main:  # before any data is decoded
        claim_run_folder(out, resume, args.overwrite)
    if resume is not None:
        load_checkpoint(resume)  # a missing or damaged checkpoint: said now, not after decoding the data
    synthetic = args.data is None
    if synthetic:
        if context.is_main:
            _synthesise(args, out)
        context.barrier()
        data_path, dataset = str(out / "synthetic"), "synthetic"
    else:
        data_path, dataset = args.data, args.dataset or "fakeavceleb"
    try:
        config = ModelConfig.preset(args.preset or ("demo" if synthetic else "small"), **overrides)
    except TypeError as exc:  # a field of the wrong type (ModelConfig's own checks raise ConfigError)
        raise ConfigError(f"--model-config {args.model_config}: {exc}") from None
    defaults = DEMO if synthetic else RECIPE
    train_config = TrainConfig(
        epochs=args.epochs if args.epochs is not None else defaults["epochs"],
        batch_size=args.batch_size or defaults["batch_size"],
        lr=args.lr or defaults["lr"],
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        label_smoothing=args.label_smoothing,
        mismatch_weight=args.mismatch_weight,
        probe_weight=args.probe_weight,
        grad_clip=args.grad_clip,
        seed=args.seed,
        max_steps=args.max_steps,
        amp=args.amp,
        workers=args.workers,
        save_every=args.save_every,
        progress=not args.no_progress,
        augment=AugmentConfig.off() if args.no_augment else AugmentConfig(),
    )
    source = _data_source(args, data_path, dataset)
    spec = ClipSpec.from_config(config, faces=args.faces)
    datasets = split_datasets(
        source,
        spec,
        ("train", "val"),
        {"train": args.train_methods, "val": args.train_methods},
        args.in_memory,
        args.workers,
        not args.no_progress and context.is_main,
        args.silence_cue,
        args.seed,
    )
    log.info("data: %s (%s): %d train, %d val clips", data_path, dataset, len(datasets["train"]), len(datasets["val"]))
    data_info = {
        **source.to_dict(),
        "faces": args.faces,
        "train_methods": args.train_methods,
        "silence_cue": args.silence_cue,
    }
    if args.allow_split_leak:  # accepted: say what leaked, so every result computed from this run shows it
        data_info["split_leak"] = source.leaks()
    trainer = Trainer(
        config, train_config, datasets["train"], datasets["val"], out, args.backend, context, data_info, args.overwrite
    )
    try:
        summary = trainer.fit(resume=resume)
    finally:
        context.close()
    if context.is_main:
        best = summary["best"]
        row = next((r for r in summary["history"] if r["epoch"] == best.get("epoch")), {})
        auc = row.get("val_clip_auc")
        shown = f"val clip AUC {auc:.4f}" if auc is not None else f"train loss {row.get('loss', float('nan')):.4f}"
        print(f"done: {summary['steps']} steps; best epoch {best.get('epoch')} ({shown})")
        print(f"checkpoints: {out / 'best.safetensors'}  {out / LAST}; log: {out / 'metrics.csv'}")
        if source.split_file:
            print(f"split: {source.split_file} fold {source.fold} sha256 {source.split_sha256}")
    return 0
