"""What every op module (``avfused/ops/<op>.py``) shares: input checks with one wording, dtypes, the
extension's status.

Each op module builds its one validator from these checks, so its ``triton`` and ``ext`` wrappers refuse
bad input with the same avfused.errors exception and message before any kernel runs. What differs between
the backends is passed in: the dtypes each takes on each device, and where each can run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from avfused import _extension, reference
from avfused.backends import interpreter_enabled, log_once
from avfused.errors import EmptyBatchError, InputDeviceError, InputDtypeError, InputRankError, InputShapeError

Tensor = torch.Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The extension computes in float32: every float dtype comes in (cast) and goes back out as it came.
EXT_DTYPES = {"cpu": FLOAT_DTYPES, "cuda": FLOAT_DTYPES}
# Triton takes float32 everywhere and bfloat16 / float16 on CUDA (tests let the interpreter take them too:
# tests/helpers.allow_triton_low_precision_on_cpu).
TRITON_DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.float16, torch.bfloat16)}

# Loaded once, when the first op module is imported; plain globals keep the per-call checks traceable
# by torch.compile.
EXT_REASONS = {"cpu": _extension.cpu_unavailable_reason(), "cuda": _extension.cuda_unavailable_reason()}


def _device_refusal(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device``, or None."""
    if backend == "ext":
        if device.type not in EXT_REASONS:
            return f"the extension has no kernels for {device.type!r} tensors (only cpu and cuda)"
        return EXT_REASONS[device.type]
    if device.type == "cpu" and not interpreter_enabled():
        return (
            "triton kernels need CUDA tensors; CPU tensors run only under TRITON_INTERPRET=1 set before importing "
            "triton (tests), or use backend='torch'"
        )
    if device.type not in ("cpu", "cuda"):
        return "triton kernels run on CUDA tensors"
    return None


def check_tensors(op: str, backend: str, **tensors: Tensor) -> torch.device:
    """All arguments are tensors on one device that ``backend`` ('triton' or 'ext') runs on, each with a
    dtype it takes there; returns that device."""
    names = list(tensors)
    first = tensors[names[0]]
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise InputDtypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device != first.device:
            raise InputDeviceError(
                f"{op}: all tensors must be on one device; {names[0]} is on {first.device} but {name} is on "
                f"{tensor.device}"
            )
    device = first.device
    refusal = _device_refusal(backend, device)
    if refusal is not None:
        raise InputDeviceError(f"{op}: the {backend} backend cannot run on {device}: {refusal}")
    allowed = (EXT_DTYPES if backend == "ext" else TRITON_DTYPES)[device.type]
    for name, tensor in tensors.items():
        if tensor.dtype not in allowed:
            names_allowed = ", ".join(str(d).replace("torch.", "") for d in allowed)
            raise InputDtypeError(
                f"{op}: {name} has dtype {tensor.dtype}; the {backend} backend takes {names_allowed} on {device.type}"
            )
    return device


def check_rank(op: str, name: str, tensor: Tensor, rank: int, layout: str) -> None:
    if tensor.dim() != rank:
        raise InputRankError(f"{op}: {name} must be {layout} ({rank} dims), got shape {tuple(tensor.shape)}")


def check_shape(op: str, name: str, tensor: Tensor, shapes: tuple | list, layout: str) -> None:
    """``tensor`` has ``shapes`` (or one of a list of shapes); ``None`` accepts any size there."""
    candidates = shapes if isinstance(shapes, list) else [shapes]
    actual = tuple(tensor.shape)
    for shape in candidates:  # a plain loop: the folded model checks a few hundred shapes per clip
        if len(shape) == len(actual) and all(w is None or w == g for w, g in zip(shape, actual, strict=True)):
            return
    wanted = " or ".join(str(tuple("*" if s is None else s for s in shape)) for shape in candidates)
    raise InputShapeError(f"{op}: {name} must be {layout} = {wanted}, got {actual}")


def check_non_empty(op: str, name: str, tensor: Tensor, layout: str, items: str) -> None:
    """No zero-sized dimension; a zero first (batch) dimension is an EmptyBatchError."""
    if tensor.shape[0] == 0:
        raise EmptyBatchError(
            f"{op}: {name} must be non-empty {layout}; it has zero {items}, shape {tuple(tensor.shape)}"
        )
    if tensor.numel() == 0:
        raise InputShapeError(f"{op}: {name} must be non-empty {layout}, got shape {tuple(tensor.shape)}")


def float32_contiguous(tensor: Tensor) -> Tensor:
    """The float32 contiguous tensor the kernels read (differentiable; no copy when already so)."""
    return tensor.to(torch.float32).contiguous()


def autograd_records(*tensors: Tensor) -> bool:
    """True when autograd will need a backward through these tensors."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def reference_on_gpu(op: str):
    """The reference for an ext op, or a shape of it, that has no CUDA kernel, on CUDA tensors (logged once)."""
    log_once(
        ("missing", "cuda", op, "gpu"),
        "avfused: backend 'cuda' has no GPU kernel for %s (or these sizes); using the torch reference on CUDA tensors",
        op,
    )
    return getattr(reference, op)


# ---------------------------------------------------------------------------------------------
# forward-only extension ops (CPU inference kernels of the folded model, avfused.inference)
# ---------------------------------------------------------------------------------------------
def forward_only_ext(op: str, tensors: tuple[Tensor, ...], *scalars: object) -> Tensor:
    """Run ``avfused_ext::<op>`` (a C++ CPU forward) on float32 copies of ``tensors`` and ``scalars``, cast back
    to the first tensor's dtype; CUDA tensors and calls that autograd records run ``reference.<op>``."""
    if tensors[0].device.type == "cuda":
        return reference_on_gpu(op)(*tensors, *scalars)
    if autograd_records(*tensors):  # the op's backward would recompute through the reference anyway
        return getattr(reference, op)(*tensors, *scalars)
    out = getattr(torch.ops.avfused_ext, op)(*(t.float() for t in tensors), *scalars)
    return out.to(tensors[0].dtype)


def register_forward_only_ext(op: str, fake) -> None:
    """The fake of ``avfused_ext::<op>`` and its autograd: the gradient recomputes through ``reference.<op>``
    (the kernel has no backward), for the tensor inputs; the scalar ones get None."""
    torch.library.register_fake(f"avfused_ext::{op}")(fake)
    reference_fn = getattr(reference, op)

    def setup_context(ctx, inputs, output):
        ctx.count = sum(isinstance(value, torch.Tensor) for value in inputs)
        ctx.scalars = inputs[ctx.count :]
        ctx.save_for_backward(*inputs[: ctx.count])

    def backward(ctx, grad_out):
        _, vjp = torch.func.vjp(lambda *tensors: reference_fn(*tensors, *ctx.scalars), *ctx.saved_tensors)
        return (*vjp(grad_out), *([None] * len(ctx.scalars)))

    torch.library.register_autograd(f"avfused_ext::{op}", backward, setup_context=setup_context)


# ---------------------------------------------------------------------------------------------
# extension ops with a C++ CPU backward (the SAAVM's token building and scatter-back, which also train)
# ---------------------------------------------------------------------------------------------
def register_trainable_ext(op: str, fake) -> None:
    """The fakes of ``avfused_ext::<op>`` and ``avfused_ext::<op>_backward`` (grad_outputs..., the op's inputs ->
    one gradient per tensor input) and the op's autograd through the backward op; scalar inputs get None."""
    torch.library.register_fake(f"avfused_ext::{op}")(fake)
    outputs = len(getattr(torch.ops.avfused_ext, op).default._schema.returns)

    def backward_fake(*args):  # args: the output gradients, then the op's inputs
        return tuple(t.new_empty(t.shape) for t in args[outputs:] if isinstance(t, torch.Tensor))

    torch.library.register_fake(f"avfused_ext::{op}_backward")(backward_fake)

    def setup_context(ctx, inputs, output):
        ctx.count = sum(isinstance(value, torch.Tensor) for value in inputs)
        ctx.scalars = inputs[ctx.count :]
        ctx.save_for_backward(*inputs[: ctx.count])

    def backward(ctx, *grads):
        backward_op = getattr(torch.ops.avfused_ext, f"{op}_backward")  # looked up per call: tests may wrap it
        grads = tuple(grad.contiguous() for grad in grads[:outputs])
        return (*backward_op(*grads, *ctx.saved_tensors, *ctx.scalars), *([None] * len(ctx.scalars)))

    torch.library.register_autograd(f"avfused_ext::{op}", backward, setup_context=setup_context)


# ---------------------------------------------------------------------------------------------
# batch-statistics ops (the SAAVM's training batch norms): (x, weight, bias) -> (mean (C,), var (C,))
# ---------------------------------------------------------------------------------------------
def register_statistics_op(qualname: str) -> None:
    """The fakes of the statistics op ``qualname`` (x, weight, bias) -> (mean, var), float32 of bias's shape, and
    of ``qualname``_backward (grad_mean, grad_var, x, weight, bias, mean) -> gradients like (x, weight, bias);
    and the op's autograd through that backward op (it saves the inputs and the mean, and recomputes the rest)."""
    namespace, name = qualname.split("::")

    def fake(x, weight, bias):  # float32, as the weights (whatever the activations' dtype)
        return bias.new_empty(bias.shape, dtype=torch.float32), bias.new_empty(bias.shape, dtype=torch.float32)

    def backward_fake(grad_mean, grad_var, x, weight, bias, mean):
        return tuple(t.new_empty(t.shape) for t in (x, weight, bias))

    torch.library.register_fake(qualname)(fake)
    torch.library.register_fake(f"{qualname}_backward")(backward_fake)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output[0])

    def backward(ctx, grad_mean, grad_var):
        backward_op = getattr(getattr(torch.ops, namespace), f"{name}_backward")  # looked up per call: tests wrap
        # float32, contiguous: the gradient of an output the loss does not use comes as (expanded) zeros
        return backward_op(grad_mean.float().contiguous(), grad_var.float().contiguous(), *ctx.saved_tensors)

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)


# ---------------------------------------------------------------------------------------------
# autocast: what a raw torch.ops.avfused_*::<op> call does inside torch.autocast
# ---------------------------------------------------------------------------------------------
FLOAT32_ONLY = {"cpu": (torch.float32,), "cuda": (torch.float32,)}
# the extension ops whose CUDA kernels read fp16 / bf16 activations (their C++ ones: float32)
EXT_HALF_ON_CUDA = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.float16, torch.bfloat16)}


def ext_activation_dtype(x: Tensor) -> torch.dtype:
    """The dtype an EXT_HALF_ON_CUDA op's kernels read x in: x's own where they take it on x's device, else
    float32 (the C++ kernels; float64 is computed in float32)."""
    return x.dtype if x.dtype in EXT_HALF_ON_CUDA.get(x.device.type, ()) else torch.float32
_AUTOCAST_LIBRARIES: dict[str, torch.library.Library] = {}  # kept alive: a registration lives as long as its library


def autocast_activation_dtype(device_type: str, takes: Sequence[torch.dtype]) -> torch.dtype:
    """The dtype an op's activations get inside an autocast region: the region's own where the kernel reads
    it (its products then run in it, accumulating in float32), float32 where it does not."""
    wanted = torch.get_autocast_dtype(device_type)
    return wanted if wanted in takes else torch.float32


def register_autocast(qualname: str, activations: Sequence[int], takes: Mapping[str, Sequence[torch.dtype]]) -> None:
    """Autocast rule of the forward op ``qualname`` ("avfused_ext::conv_mlp"), on CPU and CUDA: the tensor
    arguments at ``activations`` are cast to ``autocast_activation_dtype(device, takes[device])`` (``takes`` is
    read at each call); weights, float64 and non-float tensors are left as they are (the kernels read weights
    in float32). torch.library.register_autocast would cast every argument to one dtype fixed at registration,
    so a bf16 rule would also serve fp16 regions and cut the weights."""
    namespace, name = qualname.split("::")
    library = _AUTOCAST_LIBRARIES.setdefault(namespace, torch.library.Library(namespace, "FRAGMENT"))
    op = getattr(getattr(torch.ops, namespace), name).default
    for device_type in ("cpu", "cuda"):
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        library.impl(name, _autocast_kernel(op, device_type, key, tuple(activations), takes), key, with_keyset=True)


def _autocast_kernel(op, device_type: str, key: str, activations: tuple[int, ...], takes):
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def cast(value: object, dtype: torch.dtype) -> object:
        eligible = isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64
        return value.to(dtype) if eligible else value

    def kernel(_keyset, *args):
        dtype = autocast_activation_dtype(device_type, takes[device_type])
        args = tuple(cast(value, dtype) if i in activations else value for i, value in enumerate(args))
        with torch._C._ExcludeDispatchKeyGuard(excluded):  # the op itself runs with autocast off, as ATen's do
            return op(*args)

    return kernel
