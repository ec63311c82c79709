"""Small shared test fixtures: a tiny config that keeps every code path but runs in milliseconds, and the
backend targets the op tests are parametrised over."""

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import pytest
import torch

from avfused import ModelConfig, backends


def tiny_config(**overrides) -> ModelConfig:
    """Two stages, 3 frames of 30x30 (not a multiple of the 7x7 window), 0.06 s of audio, 8 sinc filters."""
    base = dict(
        widths=(4, 8),
        depths=(1, 2),
        frames=3,
        image_size=30,
        clip_seconds=0.06,
        sinc_filters=8,
        sinc_kernel_size=31,
    )
    return ModelConfig(**{**base, **overrides})


def random_batch(config: ModelConfig, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    video = torch.rand(batch, config.frames, 3, config.image_size, config.image_size)
    audio = torch.randn(batch, config.num_samples) * 0.1
    return video, audio


# ---------------------------------------------------------------------------------------------
# backend targets of the op tests (tests/ops/): every (backend, device) pair an op can run on here
# ---------------------------------------------------------------------------------------------
GPU = torch.cuda.is_available()
# Triton runs where its kernels run: the GPU when there is one, else the CPU under the interpreter
# (tests/conftest.py sets TRITON_INTERPRET=1 only when no GPU is visible).
TRITON_DEVICE = "cuda" if GPU else "cpu"


@dataclass(frozen=True)
class Target:
    """One backend of an op module (``triton`` or ``ext``) on one device."""

    backend: str
    device: str

    def op(self, module: ModuleType) -> Callable:
        """The op module's function for this backend."""
        return getattr(module, self.backend)

    def put(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The tensors on this target's device (views stay views where the device does not change)."""
        return [t.to(self.device) for t in tensors]


def _target(backend: str, device: str, name: str) -> pytest.param:
    marks = [pytest.mark.gpu] if device == "cuda" else []
    if device != "cuda" or GPU:
        reason = backends.unavailable_reason("cuda" if backend == "ext" else backend, device)
        marks.append(pytest.mark.skipif(reason is not None, reason=f"{name}: {reason}"))
    return pytest.param(Target(backend, device), id=name, marks=marks)


TRITON = _target("triton", TRITON_DEVICE, "triton")
EXT_CPU = _target("ext", "cpu", "ext-cpu")
EXT_CUDA = _target("ext", "cuda", "ext-cuda")
TARGETS = [TRITON, EXT_CPU, EXT_CUDA]
# Low-precision dtypes the Triton op tests run in: the interpreter rounds its fp32 -> bf16 stores toward zero
# (an output stored in bf16 misses by twice PyTorch's rounding), so bf16 is checked on GPUs only
TRITON_LOW_PRECISION = [torch.float16, torch.bfloat16] if GPU else [torch.float16]


# The C++ CPU kernels' code paths: the best the CPU has, the 8-lane one (AVX2 / baseline, also on AVX-512
# machines) and the 16-lane one (built for the baseline ISA where the CPU lacks AVX-512).
CPU_LANES = ("best-isa", "8-lane", "16-lane")


def use_cpu_lanes(monkeypatch: pytest.MonkeyPatch, lanes: str) -> None:
    """Send the extension's per-image C++ kernels down one of CPU_LANES."""
    if lanes == "8-lane":
        monkeypatch.setenv("AVFUSED_CPU_NO_AVX512", "1")
    if lanes == "16-lane":
        monkeypatch.setenv("AVFUSED_CPU_PORTABLE_WIDE", "1")


# ---------------------------------------------------------------------------------------------
# forward-only extension ops (the folded model's CPU kernels): shared checks of their op tests
# ---------------------------------------------------------------------------------------------
def check_forward_only_ext(module: ModuleType, inputs: list[torch.Tensor], scalars: tuple = (),
                           names: tuple[str, ...] = ()) -> None:
    """The wrapper's inference forward against the float64 reference (dtype kept), then the raw op
    ``avfused_ext::<op>``: its forward and the gradient of every tensor input (its autograd recomputes
    through the reference) against float64."""
    from avfused import reference
    from avfused.testing import assert_matches_reference, check_against_reference

    reference_fn = getattr(reference, module.OP)
    with torch.no_grad():
        out = module.ext(*inputs, *scalars)
    assert out.dtype == inputs[0].dtype
    assert_matches_reference(out, reference_fn(*(t.double() for t in inputs), *scalars), name="forward")
    raw = getattr(torch.ops.avfused_ext, module.OP)
    check_against_reference(lambda *t: raw(*t, *scalars), lambda *t: reference_fn(*t, *scalars), inputs,
                            names or tuple(f"input {i}" for i in range(len(inputs))))


def check_wrapper_runs_reference_under_autograd(module: ModuleType, inputs: list[torch.Tensor], scalars: tuple,
                                                monkeypatch) -> None:
    """Inference runs the C++ op; a call that autograd records runs the reference (the op has no backward)."""
    calls = []
    ops = torch.ops.avfused_ext
    raw = getattr(ops, module.OP)
    monkeypatch.setattr(ops, module.OP, lambda *args: calls.append(1) or raw(*args), raising=False)
    with torch.no_grad():
        module.ext(*inputs, *scalars)
    assert calls == [1]
    inputs[1].requires_grad_()
    module.ext(*inputs, *scalars)
    assert calls == [1]


def check_float64_in_float64_out(module: ModuleType, inputs: list[torch.Tensor], scalars: tuple = ()) -> None:
    """The extension computes in float32 but hands back the dtype it was given."""
    from avfused import reference
    from avfused.testing import assert_matches_reference

    with torch.no_grad():
        out = module.ext(*(t.double() for t in inputs), *scalars)
    assert out.dtype == torch.float64
    expected = getattr(reference, module.OP)(*(t.double() for t in inputs), *scalars)
    assert_matches_reference(out.float(), expected)


def opcheck_forward_only(module: ModuleType, inputs: list[torch.Tensor], scalars: tuple = ()) -> None:
    """Schema, fake and autograd registration of ``avfused_ext::<op>`` (an inference op: no AOT tracing)."""
    op = getattr(torch.ops.avfused_ext, module.OP).default
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(op, [t.requires_grad_() for t in inputs] + list(scalars), test_utils=checks)


def allow_triton_low_precision_on_cpu(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """The Triton interpreter runs fp16 and bf16 kernels; the wrappers take them only on CUDA (avfused.ops._common)."""
    from avfused.ops import _common

    if device == "cpu":
        monkeypatch.setitem(_common.TRITON_DTYPES, "cpu", (torch.float32, torch.float16, torch.bfloat16))


def float64_reference(reference_fn: Callable, inputs: list[torch.Tensor], grad: torch.Tensor, **kwargs):
    """reference_fn's output and the gradient of <output, grad> for every input, all in float64."""
    from avfused.testing import forward_and_grads, leaves

    out, grads = forward_and_grads(reference_fn, leaves(inputs, torch.float64), grad, **kwargs)
    return out, list(grads)


# ---------------------------------------------------------------------------------------------
# extension ops with a C++ CPU backward (the SAAVM's token building and scatter-back): shared checks
# ---------------------------------------------------------------------------------------------
def check_trainable_ext(module: ModuleType, inputs: list[torch.Tensor], scalars: tuple = (),
                        names: tuple[str, ...] = (), views: Callable | None = None) -> None:
    """The wrapper ``module.ext`` (the C++ forward and backward ops), forward and the gradient of every tensor
    input, against the float64 reference; ``views`` (optional) turns the leaves into the tensors both are
    called on (non-contiguous views), so that the gradients flow back through them."""
    from avfused import reference
    from avfused.testing import check_against_reference

    reference_fn = getattr(reference, module.OP)
    views = views or (lambda *tensors: tensors)
    check_against_reference(lambda *t: module.ext(*views(*t), *scalars),
                            lambda *t: reference_fn(*views(*t), *scalars), inputs,
                            names or tuple(f"input {i}" for i in range(len(inputs))))


def check_wrapper_trains_through_cpp(module: ModuleType, inputs: list[torch.Tensor], scalars: tuple,
                                     monkeypatch) -> None:
    """A call that autograd records runs the C++ forward, and its backward the C++ backward op."""
    calls = []
    ops = torch.ops.avfused_ext
    for name in (module.OP, f"{module.OP}_backward"):
        raw = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *args, raw=raw, name=name: calls.append(name) or raw(*args),
                            raising=False)
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = module.ext(*inputs, *scalars)
    assert calls == [module.OP]
    outputs = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(outputs, [torch.randn_like(o) for o in outputs])
    assert calls == [module.OP, f"{module.OP}_backward"]
    assert all(t.grad is not None for t in inputs)


def opcheck_trainable(module: ModuleType, inputs: list[torch.Tensor], scalars: tuple = (),
                      backward_extra: Callable = lambda out: []) -> None:
    """Schema, fake, autograd registration and AOT tracing of ``avfused_ext::<op>`` and of its backward op
    (called on the output gradients, the op's inputs, then ``backward_extra(output)``)."""
    ops = torch.ops.avfused_ext
    torch.library.opcheck(getattr(ops, module.OP).default, [t.requires_grad_() for t in inputs] + list(scalars))
    inputs = [t.detach() for t in inputs]
    out = getattr(ops, module.OP)(*inputs, *scalars)
    grads = [torch.randn_like(o) for o in (out if isinstance(out, tuple) else (out,))]
    backward_args = [*grads, *inputs, *scalars, *backward_extra(out)]
    torch.library.opcheck(getattr(ops, f"{module.OP}_backward").default, backward_args)


# ---------------------------------------------------------------------------------------------
# Triton kernels of the SAAVM's token building and scatter-back: shared check of their op tests
# ---------------------------------------------------------------------------------------------
def check_triton_op(module: ModuleType, inputs: list[torch.Tensor], scalars: tuple = (), names: tuple[str, ...] = (),
                    dtype: torch.dtype | None = None) -> None:
    """``module.triton`` against the float64 reference, forward and the gradient of every input: float32 by the
    1e-4 rule, or (``dtype`` fp16 / bf16) every input in that dtype by the low-precision rule. Outputs that are
    tuples (statistics) are stacked, in the inputs' dtype."""
    from avfused import reference
    from avfused.testing import check_against_reference, check_low_precision

    def stacked(fn: Callable) -> Callable:
        def run(*tensors):
            out = fn(*tensors, *scalars)
            return torch.stack(out).to(tensors[0].dtype) if isinstance(out, tuple) else out
        return run

    names = names or tuple(f"input {i}" for i in range(len(inputs)))
    reference_fn = getattr(reference, module.OP)
    if dtype is None:
        check_against_reference(stacked(module.triton), stacked(reference_fn), inputs, names)
    else:
        check_low_precision(stacked(module.triton), stacked(reference_fn), inputs, names, dtype)


def opcheck_triton(module: ModuleType, inputs: list[torch.Tensor], scalars: tuple, op_name: str, monkeypatch) -> None:
    """Schema, fake, autograd registration and AOT tracing of the custom op ``module.<op_name>`` as
    ``module.triton`` calls it (its arguments recorded on the way)."""
    op = getattr(module, op_name)
    calls = []
    monkeypatch.setattr(module, op_name, lambda *args: calls.append(args) or op(*args))
    module.triton(*[t.detach().requires_grad_() for t in inputs], *scalars)
    (args,) = calls
    torch.library.opcheck(op, [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args])
