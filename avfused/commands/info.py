"""``avfused info``: versions, devices, backends (and why any is missing), parameter counts."""

from __future__ import annotations

import argparse
import json
import platform

import torch

from avfused.backends import DESCRIPTIONS

HELP = "print versions, devices, available backends and parameter counts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=["small", "large", "demo"],
        action="append",
        help="count parameters of this preset (repeatable; default: all three)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def collect(presets: list[str]) -> dict:
    """Everything ``info`` reports, as plain data."""
    import avfused
    from avfused import ModelConfig, SingleStreamNet, available_backends

    versions = {"avfused": avfused.__version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "torchaudio", "av", "cv2"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    devices = ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    from avfused.backends import op_backends

    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    backends = {device: available_backends(device) for device in device_types}
    per_op = {
        device: {mode: op_backends(device, training=mode == "training") for mode in ("inference", "training")}
        for device in device_types
    }
    counts = {name: SingleStreamNet(ModelConfig.preset(name)).parameter_counts() for name in presets}
    return {"versions": versions, "devices": devices, "backends": backends, "auto_per_op": per_op,
            "parameters": counts}


def run(args: argparse.Namespace) -> int:
    report = collect(args.preset or ["small", "large", "demo"])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in report["versions"].items()))
    print("devices:  " + ", ".join(report["devices"]))
    print("backends:")
    for name, what in DESCRIPTIONS.items():
        print(f"  {name:7s} {what}")
    for device, status in report["backends"].items():
        print(f"backends on {device}:")
        for name, reason in status.items():
            print(f"  {name:7s} {'available' if reason is None else 'unavailable: ' + reason}")
        for mode, choice in report["auto_per_op"][device].items():
            print(f"  auto, {mode}: " + ", ".join(f"{op} -> {backend}" for op, backend in choice.items()))
    print("parameters:")
    for preset, counts in report["parameters"].items():
        print(f"  {preset:6s} {counts['inference']:>10,d} for inference  (+{counts['training_only']:,d} training-only)")
    return 0
