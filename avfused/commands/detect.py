"""``avfused detect CKPT VIDEO...``: fake probabilities of the clip, visual and audio heads for each file.

Long videos are scored in sliding windows of the model's clip length (``--hop`` seconds apart) and the
windows aggregated (``--aggregate mean|max``). A file that cannot be read prints one line with the
reason; the other files go on, and the exit status is 1. On the CPU the model runs as its inference-folded
copy (avfused.inference, the same scores with fewer passes; ``--no-fold`` runs it as trained).
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
    parser.add_argument("--threshold", type=float, default=0.5, help="probability at or above which a file is FAKE")
    parser.add_argument("--faces", default=None, help="face crops: none, auto, haar, skin (default: as trained)")
    parser.add_argument("--windows", action="store_true", help="also print every window's scores")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--backend", default="auto", help="kernels: auto, torch, triton, cuda")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")
    parser.add_argument(
        "--no-fold", action="store_true",
        help="run the model as trained; by default CPU inference runs its folded copy (avfused.inference)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: one per idle core, from the load average)"
    )


def _line(result, threshold: float) -> str:
    a = result.aggregate
    verdict = "FAKE" if a["clip"] >= threshold else "real"
    return (
        f"{result.path}: {verdict}  clip {a['clip']:.4f}  visual {a['visual']:.4f}  audio {a['audio']:.4f}"
        f"  ({len(result.windows)} window{'s' if len(result.windows) != 1 else ''})"
    )


def run(args: argparse.Namespace) -> int:
    from avfused.checkpoint import load_checkpoint, load_model
    from avfused.data.decode import ClipSpec
    from avfused.detect import detect_file
    from avfused.evaluate import resolve_device
    from avfused.inference import inference_model
    from avfused.training.threads import set_threads

    set_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    model = inference_model(load_model(args.checkpoint, args.backend, device), fold=False if args.no_fold else None)
    faces = args.faces or (checkpoint.state.get("data") or {}).get("faces", "none")
    spec = ClipSpec.from_config(checkpoint.config, faces=faces)
    results, failed = [], 0
    for path in args.videos:
        amp = device.type == "cuda"
        result = detect_file(model, path, spec, args.hop, args.batch_size, device, amp, args.aggregate)
        results.append(result)
        if not result.ok:
            failed += 1
            print(f"error: {result.error}", file=sys.stderr)
            continue
        if not args.json:
            print(_line(result, args.threshold))
            if args.windows:
                for w in result.windows:
                    scores = f"clip {w.clip:.4f}  visual {w.visual:.4f}  audio {w.audio:.4f}"
                    print(f"    {w.start:8.2f}-{w.end:8.2f} s  {scores}")
    if args.json:
        document = {
            "checkpoint": str(args.checkpoint),
            "threshold": args.threshold,
            "aggregate": args.aggregate,
            "files": [r.to_dict() for r in results],
        }
        print(json.dumps(document, indent=2))
    return 1 if failed else 0
