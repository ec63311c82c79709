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
    backends = {"cpu": available_backends("cpu")}
    if torch.cuda.is_available():
        backends["cuda"] = available_backends("cuda")
    counts = {name: SingleStreamNet(ModelConfig.preset(name)).parameter_counts() for name in presets}
    return {"versions": versions, "devices": devices, "backends": backends, "parameters": counts}


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
    print("parameters:")
    for preset, counts in report["parameters"].items():
        print(f"  {preset:6s} {counts['inference']:>10,d} for inference  (+{counts['training_only']:,d} training-only)")
    return 0
