"""``avfused bench``: every fused op and the whole model, each backend side by side, in one run.

Prints a markdown table (times, ratios to eager and torch.compile, peak memory, work rates, the issue's
targets) and writes benchmarks/results/<device>.{md,json,csv,png}. ``--quick`` uses tiny shapes and
skips torch.compile: a check that the harness works, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

HELP = "benchmark the fused ops and the model against eager PyTorch and torch.compile"

DEFAULT_BATCHES = {"cpu": (1, 8), "cuda": (1, 32)}  # inference at each
DEFAULT_TRAIN_BATCH = {"cpu": 4, "cuda": 32}
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
QUICK_BATCHES = (1, 2)
DEFAULT_WARMUP = {"cpu": 1, "cuda": 2}  # a GPU's second call can still autotune or build CUDA graphs
BLOCKS_GROUP = "blocks"  # --ops name for every stage's CAVL block


def _choices(allowed: tuple[str, ...], everything: tuple[str, ...] | None = None):
    """A comma-separated subset of ``allowed``; "all" means ``everything`` (default: all of allowed)."""

    def parse(text: str) -> list[str]:
        if text.strip() == "all":
            return list(everything or allowed)
        names = [name.strip() for name in text.split(",") if name.strip()]
        wrong = [name for name in names if name not in allowed]
        if wrong or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(allowed)}, got {text!r}")
        return names

    return parse


def _batch_sizes(text: str) -> list[int] | None:
    if text.strip() == "auto":
        return None
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive batch sizes like 1,8, got {text!r}")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avfused.bench.cases import ALL_SUBJECTS, MODES, SUBJECTS
    from avfused.bench.detection import DETECT
    from avfused.bench.variants import VARIANTS

    subjects = ALL_SUBJECTS + (BLOCKS_GROUP, DETECT)
    parser.add_argument(
        "--ops",
        type=_choices(subjects, SUBJECTS + (DETECT,)),
        default="all",
        help="comma-separated: " + ",".join(SUBJECTS + (DETECT,)) + f" ({DETECT}: end-to-end avfused detect on 60 s "
        "of 720p video); all: those. On request: blocks (or block0..block3: one CAVL block of each stage)",
    )
    parser.add_argument("--modes", type=_choices(MODES), default="all", help="comma-separated: " + ",".join(MODES))
    parser.add_argument(
        "--backends", type=_choices(VARIANTS), default="all", help="comma-separated: " + ",".join(VARIANTS)
    )
    parser.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default="auto",
        help="inference runs at each (auto: 1,8 on CPU, 1,32 on GPU; --quick 1,2)",
    )
    parser.add_argument(
        "--train-batch",
        type=int,
        default=0,
        help="the batch of the training modes (0: 4 on CPU, 32 on GPU; --quick the largest of --batch-sizes)",
    )
    parser.add_argument(
        "--amp",
        choices=sorted(AMP_DTYPES),
        default="off",
        help="run the model under torch.autocast in bf16 or fp16 (the ops get activations in that dtype)",
    )
    parser.add_argument("--preset", choices=["small", "large", "demo"], default="small", help="model config")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: the GPU when present")
    parser.add_argument("--repeats", type=int, default=20, help="most timed calls per case and backend")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed calls first, the first compiling (0: 1 on CPU, 2 on GPU)",
    )
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timed calls per case and backend")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="start no new measurement after this long (0: no limit); the model runs first, the rest is listed skipped",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's choice; detect: as avfused detect picks)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes, no torch.compile, 2 repeats: checks the harness (CI)"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"), help="where results go")
    parser.add_argument(
        "--video-dir",
        type=Path,
        default=None,
        help="where the detect case's 720p video is written once and reused (default: <tmp>/avfused-bench)",
    )
    parser.add_argument("--no-save", action="store_true", help="print the table only, write no files")
    parser.add_argument(
        "--update-readme",
        type=Path,
        default=None,
        metavar="README.md",
        help="also put the summary table between the README's <!-- bench:start/end --> markers",
    )


def _subjects(names: list[str], config) -> list[str]:
    """--ops with "blocks" as every stage's block of ``config``; a block the config lacks is an error."""
    from avfused.bench.cases import block_stage
    from avfused.errors import ConfigError

    stages = len(config.widths)
    expanded = []
    for name in names:
        expanded += [f"block{stage}" for stage in range(stages)] if name == BLOCKS_GROUP else [name]
    for name in expanded:
        stage = block_stage(name)
        if stage is not None and stage >= stages:
            raise ConfigError(f"--ops {name}: this model config has {stages} stages (block0..block{stages - 1})")
    return list(dict.fromkeys(expanded))


def settings_from_args(args: argparse.Namespace):
    from avfused.bench.cases import quick_config
    from avfused.bench.runner import Settings
    from avfused.config import ModelConfig

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("avfused bench: --device cuda but no CUDA device is visible")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.threads or args.quick:
        # one thread for --quick: on a shared machine, tiny ops stall on busy OpenMP workers
        torch.set_num_threads(args.threads or 1)
    compile_skipped = "--no-compile" if args.no_compile else None
    if args.quick:
        compile_skipped = "--quick skips torch.compile (tiny shapes; a harness check, not a measurement)"
    config = quick_config() if args.quick else ModelConfig.preset(args.preset)
    return Settings(
        config=config,
        config_name="quick (tiny)" if args.quick else args.preset,
        device=device,
        subjects=_subjects(args.ops, config),
        modes=args.modes,
        batch_sizes=args.batch_sizes or (QUICK_BATCHES if args.quick else DEFAULT_BATCHES[device.type]),
        train_batch=args.train_batch or (None if args.quick else DEFAULT_TRAIN_BATCH[device.type]),
        amp=AMP_DTYPES[args.amp],
        variants=args.backends,
        compile_skipped=compile_skipped,
        warmup=1 if args.quick else max(args.warmup or DEFAULT_WARMUP[device.type], 1),
        repeats=2 if args.quick else max(args.repeats, 1),
        min_repeats=2 if args.quick else 3,
        budget_s=0.0 if args.quick else args.budget,
        quick=args.quick,
        time_limit_s=args.time_limit or None,
        command=_command_line(),
        video_dir=args.video_dir,
        detect_threads=args.threads or (1 if args.quick else 0),
    )


def _command_line() -> str:
    """How this run was started, for the report ('' when not from the command line)."""
    if "bench" not in sys.argv[1:]:
        return ""
    return "avfused " + " ".join(shlex.quote(arg) for arg in sys.argv[sys.argv.index("bench", 1) :])


def run(args: argparse.Namespace) -> int:
    from avfused.bench import report
    from avfused.bench.runner import run_benchmarks

    on_row = None
    if not args.no_save:  # keep what is measured so far if the run is stopped (a time-limited GPU check)

        def on_row(partial) -> None:
            report.write_partial(partial, args.output_dir)

    result = run_benchmarks(settings_from_args(args), on_row=on_row)
    text = report.markdown_report(result)
    print(text)
    if not args.no_save:
        paths = report.write_outputs(result, args.output_dir, text)
        print("wrote " + ", ".join(str(path) for path in paths.values()), file=sys.stderr)
    if args.update_readme is not None:
        link = None
        if not args.no_save:  # a link relative to the README, so it works on the repository's web page
            link = os.path.relpath(paths["markdown"].resolve(), args.update_readme.resolve().parent)
        report.update_readme(args.update_readme, report.readme_summary(result, link))
        print(f"updated {args.update_readme}", file=sys.stderr)
    measured = [row for row in result.rows + result.detection if row.status == "ok"]
    return 0 if measured else 1
