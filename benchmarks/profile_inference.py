"""Where CPU inference spends its time: the folded model on the C++ path, per operator, per clip.

    python benchmarks/profile_inference.py [--batch 1] [--threads 2] [--iters 5] [--preset small] [--out PATH]

Runs what ``avfused detect`` and ``avfused eval`` run on a CPU (``inference_model``: the eval-mode model
folded for inference, backend auto, so the C++ ops) on random clips of the preset's input, under
torch.profiler after two warm-up calls, and writes a markdown table (default
benchmarks/results/profile_inference_cpu.md) of the operators by self CPU time per clip: the fused C++ ops
under their ``avfused_ext::`` names, the rest under ATen's. The machine may be shared: the shares are what to
read, the milliseconds move with the load.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from avfused import ModelConfig, SingleStreamNet
from avfused.inference import inference_model

DEFAULT_OUT = Path(__file__).parent / "results" / "profile_inference_cpu.md"
TOP = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--preset", default="small", choices=["small", "demo", "large"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = getattr(ModelConfig, args.preset)()
    model = inference_model(SingleStreamNet(config).eval())
    video = torch.rand(args.batch, config.frames, 3, config.image_size, config.image_size)
    audio = torch.randn(args.batch, config.num_samples) * 0.1
    with torch.no_grad():
        for _ in range(2):
            model(video, audio)
        times = []
        for _ in range(args.iters):  # wall time without the profiler (its start and its trace cost seconds)
            started = time.perf_counter()
            model(video, audio)
            times.append(time.perf_counter() - started)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.iters):
                model(video, audio)
        wall = statistics.median(times)
    clips = args.iters * args.batch
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [
        f"# CPU inference profile ({args.preset}, folded model, C++ path)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch "
        f"threads, torch {torch.__version__}. Input: video {tuple(video.shape)}, audio {tuple(audio.shape)}.",
        f"Command: `python benchmarks/profile_inference.py --batch {args.batch} --threads {args.threads} "
        f"--iters {args.iters} --preset {args.preset}`.",
        "",
        f"Wall time (median of {args.iters} calls, without the profiler): {1e3 * wall / args.batch:.1f} ms per "
        f"clip; the operators' self CPU time below adds up to {total / 1e3 / clips:.1f} ms per clip.",
        "",
        "| operator | calls per clip | self CPU ms per clip | share |",
        "| --- | ---: | ---: | ---: |",
    ]
    for event in events[:TOP]:
        lines.append(
            f"| `{event.key}` | {event.count / clips:.1f} | {event.self_cpu_time_total / 1e3 / clips:.2f} | "
            f"{100 * event.self_cpu_time_total / total:.1f} % |"
        )
    rest = sum(e.self_cpu_time_total for e in events[TOP:])
    others = f"| (the other {len(events) - TOP} operators) | | {rest / 1e3 / clips:.2f} | {100 * rest / total:.1f} % |"
    lines.append(others)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
