"""Where the reference model spends time and memory: per module and per hot op, forward and backward.

    python benchmarks/profile_reference.py [--batch 8] [--iters 2] [--preset small] [--out PATH]

Runs the pure-PyTorch reference (backend='torch') SingleStreamNet at the default input (T=10 frames of
224x224, 3 s of 16 kHz audio) on the CPU, in training mode, and writes a markdown report
(default benchmarks/results/profile_reference_cpu.md) with:

* per module kind (audio stem, video stem, downsamples, VPM large-kernel attention, VPM conv MLP, rest of
  VPM, SAAVM, classifier): forward and backward milliseconds (module hooks) and the bytes autograd keeps
  for backward (saved-tensor hooks, one count per storage);
* each hot op of ``avfused.reference`` at the shapes the model calls it with, timed alone;
* the top aten operators (torch.profiler) and the peak resident memory of the process;
* the fusion targets ranked by their share of forward + backward time.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from avfused import ModelConfig, SingleStreamNet, reference

HOT_OPS = ("audio_frontend_stem", "joint_token_attention", "large_kernel_attention", "conv_mlp")
SAAVM_PARTS = ("video_squeeze", "audio_squeeze", "video_expand", "audio_expand")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "profile_reference_cpu.md"


def module_kind(name: str) -> str | None:
    """The report row a module belongs to (None: not reported on its own)."""
    parts = name.split(".")
    if name in ("audio_stem", "video_stem", "classifier"):
        return name
    if len(parts) == 3 and parts[2] == "downsample":
        return "downsample"
    if len(parts) == 5 and parts[4] == "saavm":
        return "saavm (total)"
    if len(parts) == 6 and parts[4] == "saavm" and parts[5] in SAAVM_PARTS:
        return f"saavm.{parts[5]}"
    if len(parts) == 5 and parts[4] == "vpm":
        return "vpm (total)"
    if len(parts) == 6 and parts[4] == "vpm" and parts[5] == "attention":
        return "vpm.large_kernel_attention"
    if len(parts) == 6 and parts[4] == "vpm" and parts[5] == "mlp":
        return "vpm.conv_mlp"
    return None


class ModuleProfiler:
    """Forward / backward wall time and saved-for-backward bytes per module kind, via hooks."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.forward_ms: dict[str, float] = defaultdict(float)
        self.backward_ms: dict[str, float] = defaultdict(float)
        self.saved: dict[str, dict[int, int]] = defaultdict(dict)
        self._stack: list[str] = []
        self._started: dict[int, float] = {}
        self._handles = []
        for name, module in model.named_modules():
            kind = module_kind(name)
            if kind is not None:
                self._hook(module, kind)

    def _hook(self, module: torch.nn.Module, kind: str) -> None:
        key = id(module)

        def forward_pre(mod, args):
            self._stack.append(kind)
            self._started[key] = time.perf_counter()

        def forward_post(mod, args, out):
            self.forward_ms[kind] += 1e3 * (time.perf_counter() - self._started.pop(key))
            self._stack.pop()

        def backward_pre(mod, grad_out):
            self._started[-key] = time.perf_counter()

        def backward_post(mod, grad_in, grad_out):
            if -key in self._started:
                self.backward_ms[kind] += 1e3 * (time.perf_counter() - self._started.pop(-key))

        self._handles += [
            module.register_forward_pre_hook(forward_pre),
            module.register_forward_hook(forward_post),
            module.register_full_backward_pre_hook(backward_pre),
            module.register_full_backward_hook(backward_post),
        ]

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """saved_tensors_hooks pack: count the tensor's storage once for every module kind on the stack."""
        try:
            storage = tensor.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):
            return tensor
        for kind in set(self._stack):
            self.saved[kind][ptr] = nbytes
        return tensor

    def saved_mb(self, kind: str) -> float:
        return sum(self.saved[kind].values()) / 2**20

    def reset(self) -> None:
        self.forward_ms.clear()
        self.backward_ms.clear()
        self.saved.clear()


def training_loss(model: SingleStreamNet, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    out = model(video, audio)
    labels = torch.arange(video.shape[0]) % 2
    loss = sum(F.cross_entropy(logits, labels) for logits in (out.clip, out.visual, out.audio))
    if out.mismatch is not None:
        loss = loss + F.cross_entropy(out.mismatch, torch.ones_like(labels))
    return loss


def capture_op_shapes(model: SingleStreamNet, video: torch.Tensor, audio: torch.Tensor) -> dict[str, list]:
    """The arguments each hot reference op is called with in one forward (tensors as shapes)."""
    calls: dict[str, list] = defaultdict(list)
    originals = {name: getattr(reference, name) for name in HOT_OPS}

    def recorder(name):
        def record(*args, **kwargs):
            calls[name].append((args, kwargs))
            return originals[name](*args, **kwargs)

        return record

    try:
        for name in HOT_OPS:
            setattr(reference, name, recorder(name))
        with torch.no_grad():
            model(video, audio)
    finally:
        for name, fn in originals.items():
            setattr(reference, name, fn)
    return calls


def time_op(name: str, args: tuple, kwargs: dict, iters: int) -> tuple[float, float, float]:
    """(forward ms, backward ms, saved MB) of one reference op call, inputs that are floats requiring grad."""
    fn = getattr(reference, name)
    leaves = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    forward, backward = [], []
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    for _ in range(iters + 1):  # the first is a warm-up
        saved.clear()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(*leaves, **kwargs)
        middle = time.perf_counter()
        out.backward(torch.ones_like(out))
        end = time.perf_counter()
        forward.append(middle - start)
        backward.append(end - middle)
    return 1e3 * min(forward[1:]), 1e3 * min(backward[1:]), sum(saved.values()) / 2**20


def describe(args: tuple) -> str:
    return ", ".join("x".join(map(str, a.shape)) for a in args[:1] if isinstance(a, torch.Tensor))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--preset", default="small", choices=("small", "large"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(0)
    config = getattr(ModelConfig, options.preset)()
    model = SingleStreamNet(config, backend="torch").train()
    batch = options.batch
    video = torch.rand(batch, config.frames, 3, config.image_size, config.image_size)
    audio = 0.1 * torch.randn(batch, config.num_samples)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    profiler = ModuleProfiler(model)
    totals = defaultdict(list)
    for step in range(options.iters + 1):  # step 0 warms up
        profiler.reset()
        model.zero_grad(set_to_none=True)
        inputs = (video.clone().requires_grad_(), audio.clone().requires_grad_())  # so backward hooks fire
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(profiler.pack, lambda t: t):
            loss = training_loss(model, *inputs)
        middle = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        if step > 0:
            totals["forward"].append(1e3 * (middle - start))
            totals["backward"].append(1e3 * (end - middle))
            for kind in list(profiler.forward_ms):
                totals[("f", kind)].append(profiler.forward_ms[kind])
                totals[("b", kind)].append(profiler.backward_ms[kind])
        print(f"step {step}: forward {1e3 * (middle - start):.0f} ms, backward {1e3 * (end - middle):.0f} ms")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        training_loss(model, video.clone().requires_grad_(), audio.clone().requires_grad_()).backward()
    top_ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)

    op_calls = capture_op_shapes(model, video, audio)
    op_rows = []
    for name, calls in op_calls.items():
        by_shape: dict[str, list] = defaultdict(list)
        for args, kwargs in calls:
            by_shape[describe(args)].append((args, kwargs))
        for shape, same in by_shape.items():
            fwd, bwd, saved = time_op(name, *same[0], iters=max(3, options.iters))
            op_rows.append((name, shape, len(same), fwd, bwd, saved))

    best = min  # the least-disturbed step: other processes share this CPU
    forward_total, backward_total = best(totals["forward"]), best(totals["backward"])
    kinds = sorted({k for (tag, k) in (key for key in totals if isinstance(key, tuple))})
    module_rows = []
    for kind in kinds:
        fwd, bwd = best(totals[("f", kind)]), best(totals[("b", kind)])
        module_rows.append((kind, fwd, bwd, profiler.saved_mb(kind)))
    module_rows.sort(key=lambda row: -(row[1] + row[2]))

    lines = [
        f"# Reference model profile ({options.preset}, batch {batch}, CPU)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}. Input: video "
        f"{tuple(video.shape)}, audio {tuple(audio.shape)}; training mode, backend='torch', fp32.",
        f"Command: `python benchmarks/profile_reference.py --batch {batch} --iters {options.iters}`. "
        "Times are the best of the measured steps after one warm-up (the CPU is shared: expect noise).",
        "",
        f"Whole step: forward {forward_total:.0f} ms, backward {backward_total:.0f} ms; "
        f"peak resident memory {peak_rss:.0f} MB (before the model ran: {rss_before:.0f} MB).",
        "",
        "## Per module kind (module hooks; 'saved' = bytes autograd keeps for backward)",
        "",
        "| module | forward ms | backward ms | fwd+bwd share | saved for backward MB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, fwd, bwd, saved in module_rows:
        share = 100 * (fwd + bwd) / (forward_total + backward_total)
        lines.append(f"| {kind} | {fwd:.0f} | {bwd:.0f} | {share:.1f}% | {saved:.0f} |")
    lines += [
        "",
        "'vpm (total)' includes its large-kernel attention and conv MLP rows, 'saavm (total)' its squeeze and",
        "expand rows (the joint attention itself is in the op table below). Backward times come from",
        "full backward hooks (grad of outputs ready -> grad of inputs done).",
        "",
        "## Hot reference ops alone, at the model's shapes (best of the measured iterations)",
        "",
        "| op | first input shape | calls per forward | forward ms | backward ms | saved MB per call |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, shape, count, fwd, bwd, saved in sorted(op_rows, key=lambda r: -r[2] * (r[3] + r[4])):
        lines.append(f"| {name} | {shape} | {count} | {fwd:.1f} | {bwd:.1f} | {saved:.1f} |")
    op_totals = defaultdict(float)
    for name, _, count, fwd, bwd, _ in op_rows:
        op_totals[name] += count * (fwd + bwd)
    lines += ["", "## Fusion targets, ranked by forward + backward time per step", ""]
    for rank, (name, ms) in enumerate(sorted(op_totals.items(), key=lambda item: -item[1]), 1):
        share = 100 * ms / (forward_total + backward_total)
        lines.append(f"{rank}. `{name}`: {ms:.0f} ms per step ({share:.1f}% of the step)")
    lines += ["", "## Top aten operators (torch.profiler, one step, by self CPU time)", "", "```", top_ops, "```", ""]
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text("\n".join(lines))
    print("\n".join(lines[:40]))
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
