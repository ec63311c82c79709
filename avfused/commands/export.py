"""``avfused export CKPT --format onnx|torch``: a deployable file of the checkpoint's model (see avfused.export).

Writes ``--out`` (default: the checkpoint's path with .onnx or .pt2), then runs the file on a random batch of
another size (onnxruntime / torch.export.load) and compares its logits with the checkpoint's eval-mode
model: more than 1e-4 apart is an error (``--no-check`` skips it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a checkpoint's model to ONNX or a torch.export program (.pt2), checked against the checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint file (e.g. runs/demo/best.safetensors)")
    parser.add_argument(
        "--format", choices=["onnx", "torch"], default="onnx",
        help="onnx (onnxruntime and other ONNX runtimes) or torch (torch.export.load)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="file to write (default: the checkpoint's path as .onnx / .pt2)")
    parser.add_argument(
        "--batch", type=int, default=2, help="example batch to trace (>= 2); the file runs any batch size"
    )
    parser.add_argument("--no-check", action="store_true", help="do not run the file to compare it with the model")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: one per idle core, from the load average)"
    )


def run(args: argparse.Namespace) -> int:
    from avfused.checkpoint import load_model
    from avfused.export import SUFFIX, check_export, export_model
    from avfused.training.threads import set_threads

    set_threads(args.threads)
    model = load_model(args.checkpoint, backend="torch")
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(SUFFIX[args.format])
    export_model(model, out, args.format, args.batch)
    print(f"wrote {out} ({args.format}, {out.stat().st_size / 2**20:.1f} MiB)")
    if not args.no_check:
        batch = args.batch + 1  # another batch size than the traced one: the batch is dynamic
        difference = check_export(out, model, batch)
        print(f"checked: largest |logit difference| to the checkpoint {difference:.2g} on {batch} random clips")
    return 0
