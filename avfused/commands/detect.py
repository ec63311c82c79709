"""``avfused detect CKPT VIDEO...``: fake probabilities of the clip, visual and audio heads for each file.

Long videos are scored in sliding windows of the model's clip length (``--hop`` seconds apart) and the
windows aggregated (``--aggregate mean|max``). Each file is decoded in one pass, its next windows while
the model scores the last (``--decode seek`` reads every window on its own, as before). A file is FAKE when
its clip score reaches the threshold: by default the one calibrated on the validation split in training
(stored in the checkpoint; see avfused.calibration), else 0.5 with a note; ``--threshold`` overrides it. A
file that cannot be read prints one line with the reason; the other files go on, and the exit status is 1.
Options that cannot work (``--hop 0``, a threshold outside [0, 1], a device or forced backend that is not
here) are one error before any file (exit status 2). A file shorter than a window is scored on a padded
window, and its line says how much. On the CPU the model runs as its inference-folded copy
(avfused.inference: the same scores with fewer passes; ``--no-fold`` runs it as trained).
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "score video files: fake probability of the clip, visual and audio heads (sliding windows)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint file (e.g. runs/demo/best.safetensors)")
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (mp4, mkv, webm, avi, ...)")
    parser.add_argument("--hop", type=float, default=None, help="seconds between window starts (default: one window)")
    parser.add_argument("--aggregate", choices=["mean", "max"], default="mean", help="how windows combine per file")
    parser.add_argument(
        "--threshold", type=float, default=None,
        help="clip probability at or above which a file is FAKE (default: the checkpoint's calibrated one, else 0.5)",
    )  # fmt: skip
    parser.add_argument("--faces", default=None, help="face crops: none, auto, haar, skin (default: as trained)")
    parser.add_argument("--windows", action="store_true", help="also print every window's scores")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="windows per forward pass (the first passes take 1, 2, 4 ...)"
    )
    parser.add_argument(
        "--decode",
        choices=["stream", "seek"],
        default="stream",
        help="stream: one pass over each file, each frame decoded once; seek: every window read on its own",
    )
    parser.add_argument("--backend", default="auto", help="kernels: auto, torch, triton, cuda")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for files of many windows")
    parser.add_argument(
        "--no-fold", action="store_true",
        help="run the model as trained; by default CPU inference runs its folded copy (avfused.inference)",
    )  # fmt: skip
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: one per idle core, from the load average, less one for decoding)",
    )


# a file whose windows are more than this share padding gets a word of warning on its line
MOSTLY_PADDED = 0.5


def _line(result, threshold: float) -> str:
    a = result.aggregate
    verdict = "FAKE" if a["clip"] >= threshold else "real"
    count = len(result.windows)
    note = f"{count} window{'s' if count != 1 else ''}"
    padded = result.padded_seconds
    if padded > 0:
        length = sum(w.end - w.start for w in result.windows)
        note += f"; {padded:.2f} s of {length:.2f} s padded (the file is shorter than a window)"
        if padded > MOSTLY_PADDED * length:
            note += ": mostly padding, the score says little"
    return (
        f"{result.path}: {verdict}  clip {a['clip']:.4f}  visual {a['visual']:.4f}  audio {a['audio']:.4f}  ({note})"
    )


def run(args: argparse.Namespace) -> int:
    from avfused.backends import resolve_backend
    from avfused.calibration import Decision, decision_threshold
    from avfused.checkpoint import load_checkpoint, load_model
    from avfused.data.decode import ClipSpec
    from avfused.detect import check_hop, default_threads, detect_file
    from avfused.errors import ConfigError
    from avfused.evaluate import check_threshold, resolve_device
    from avfused.inference import inference_model
    from avfused.training.threads import set_threads

    check_hop(args.hop)
    if args.threshold is not None:
        check_threshold(args.threshold)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    set_threads(args.threads or default_threads())
    checkpoint = load_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    resolve_backend(args.backend, device)  # a forced backend that cannot run: one error, not one per file
    model = inference_model(load_model(args.checkpoint, args.backend, device), fold=False if args.no_fold else None)
    faces = args.faces or (checkpoint.state.get("data") or {}).get("faces", "none")
    spec = ClipSpec.from_config(checkpoint.config, faces=faces)
    decision = decision_threshold(checkpoint)
    if args.threshold is not None:
        decision = Decision(args.threshold, "given with --threshold", False)
    # on stderr, so that stdout keeps one line per file (or the JSON document)
    if args.threshold is None and not decision.calibrated:
        print(f"note: threshold {decision.threshold}: {decision.source}", file=sys.stderr)
    elif not args.json:
        print(f"threshold {decision.threshold:.4f}: {decision.source}", file=sys.stderr)
    results, failed = [], 0
    for path in args.videos:
        amp = device.type == "cuda"
        result = detect_file(
            model, path, spec, args.hop, args.batch_size, device, amp, args.aggregate, not args.no_progress, args.decode
        )
        results.append(result)
        if not result.ok:
            failed += 1
            print(f"error: {result.error}", file=sys.stderr)
            continue
        if not args.json:
            print(_line(result, decision.threshold))
            if args.windows:
                for w in result.windows:
                    scores = f"clip {w.clip:.4f}  visual {w.visual:.4f}  audio {w.audio:.4f}"
                    print(f"    {w.start:8.2f}-{w.end:8.2f} s  {scores}")
    if args.json:
        document = {
            "checkpoint": str(args.checkpoint),
            "threshold": decision.threshold,
            "threshold_source": decision.source,
            "aggregate": args.aggregate,
            "files": [r.to_dict() for r in results],
        }
        print(json.dumps(document, indent=2))
    return 1 if failed else 0
