"""conv_mlp, every backend against the float64 reference: forward and every gradient.

As for large_kernel_attention, the extension's ops (``avfused_ext::conv_mlp`` and its ``_backward``) run
C++ kernels on the CPU and CUDA kernels on GPUs, in training too; the ``ext-cuda`` and ``gpu`` tests need a
GPU session.
"""

from __future__ import annotations

import pytest
import torch

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import conv_mlp
from avfused.testing import assert_matches_reference, check_against_reference, check_low_precision
from tests.helpers import EXT_CPU, EXT_CUDA, TARGETS, TRITON, allow_triton_low_precision_on_cpu, float64_reference

NAMES = ("x", "w_in", "b_in", "w_dw", "b_dw", "w_out", "b_out")
ext_ops = torch.ops.avfused_ext


def make_inputs(images, channels, expanded, height, width, conv_1x1=False, device="cpu"):
    w_in = torch.randn(expanded, channels, device=device) / channels**0.5
    w_out = torch.randn(channels, expanded, device=device) / expanded**0.5
    return [
        torch.randn(images, channels, height, width, device=device),
        w_in[:, :, None, None] if conv_1x1 else w_in,
        0.1 * torch.randn(expanded, device=device),
        torch.randn(expanded, 1, 3, 3, device=device) / 3,
        0.1 * torch.randn(expanded, device=device),
        w_out[:, :, None, None] if conv_1x1 else w_out,
        0.1 * torch.randn(channels, device=device),
    ]


def check(target, inputs):
    """The wrapper's forward and every gradient; for ext also its inference (no autograd) forward."""
    fn = target.op(conv_mlp)
    if target.backend == "ext":
        with torch.no_grad():
            out = fn(*inputs)
        assert out.dtype == inputs[0].dtype
        assert_matches_reference(out, reference.conv_mlp(*(t.double() for t in inputs)), name="forward")
    check_against_reference(fn, reference.conv_mlp, inputs, NAMES)


@pytest.fixture
def small_triton_backward_chunks(monkeypatch):
    """Small pixel tiles and three persistent programs in Triton's backward, so tile seams, several tiles per
    program and the sum of the programs' partial slots are tested."""
    from avfused.kernels import _common as kernel_common

    monkeypatch.setattr(kernel_common, "INTERPRETER_TILE_PIXELS", 64)
    monkeypatch.setattr(kernel_common, "INTERPRETER_PROGRAMS", 3)


# (images, channels, expanded, height, width, 1x1 weights as convs): odd maps, E not a multiple of the
# C++ channel group, one and three images
SHAPES = [(1, 5, 20, 7, 9, False), (3, 8, 40, 6, 11, True)]
EXT_SHAPES = SHAPES + [(1, 3, 12, 9, 13, False), (3, 5, 20, 1, 1, True), (3, 3, 7, 6, 11, False),
                       (1, 16, 64, 7, 7, True), (2, 4, 16, 20, 40, False)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", TARGETS)
def test_matches_float64(target, shape, small_triton_backward_chunks):
    check(target, make_inputs(*shape, device=target.device))


@pytest.mark.parametrize("lanes", ["best-isa", "8-lane", "16-lane"])
@pytest.mark.parametrize("shape", EXT_SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_ext_cpu_paths_match_float64(target, shape, lanes, monkeypatch):
    if lanes == "8-lane":  # the AVX2 / baseline code path, also on AVX-512 machines
        monkeypatch.setenv("AVFUSED_CPU_NO_AVX512", "1")
    if lanes == "16-lane":  # the 16-lane code, built for the baseline ISA where the CPU lacks AVX-512
        monkeypatch.setenv("AVFUSED_CPU_PORTABLE_WIDE", "1")
    check(target, make_inputs(*shape))


@pytest.mark.parametrize("target", TARGETS)
def test_non_contiguous_inputs(target):
    inputs = make_inputs(2, 4, 16, 5, 7)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[1] = inputs[1].t().contiguous().t()
    inputs = target.put(inputs)
    assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    check(target, inputs)
    inputs[0] = torch.randn(2, 8, 5, 7, device=target.device)[:, ::2]  # a channel slice
    check(target, inputs)


@pytest.mark.parametrize("target", [TRITON, EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    mlp = make_inputs(1, 4, 16, 5, 5, device=target.device)
    op = target.op(conv_mlp)
    with pytest.raises(InputRankError, match=r"\(N, C, H, W\)"):
        op(mlp[0][0], *mlp[1:])
    with pytest.raises(InputShapeError, match="w_in"):
        op(mlp[0], mlp[1][:, :3], *mlp[2:])  # channel mismatch
    with pytest.raises(InputShapeError, match="w_out"):
        op(*mlp[:5], mlp[5][:, :15], mlp[6])
    with pytest.raises(InputShapeError, match="x"):
        op(mlp[0][:, :, :0], *mlp[1:])
    with pytest.raises(InputDtypeError, match="int32"):
        op(*mlp[:3], mlp[3].to(torch.int32), *mlp[4:])
    with pytest.raises(InputDeviceError, match="meta"):
        op(*(t.to("meta") for t in mlp))
    with pytest.raises(InputDeviceError, match="meta"):
        op(*mlp[:6], mlp[6].to("meta"))


@pytest.mark.parametrize("target", [TRITON])
def test_triton_refuses_float64(target):
    mlp = make_inputs(1, 4, 16, 5, 5, device=target.device)
    with pytest.raises(InputDtypeError, match="float64"):
        target.op(conv_mlp)(mlp[0].double(), *mlp[1:])


@pytest.mark.parametrize("target", [EXT_CPU])
def test_ext_float64_inputs_give_float64_outputs(target):
    inputs = make_inputs(1, 3, 12, 6, 5)
    out = target.op(conv_mlp)(*(t.double() for t in inputs))
    assert out.dtype == torch.float64
    assert_matches_reference(out.float(), reference.conv_mlp(*(t.double() for t in inputs)))


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_ext_trains_through_its_own_kernels(target, monkeypatch):
    """Forward and backward run the extension's ops, never the reference (which would be slower)."""
    inputs = make_inputs(2, 3, 12, 6, 5, device=target.device)
    want = reference.conv_mlp(*(t.double() for t in inputs))

    def refuse(*args):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(reference, "conv_mlp", refuse)
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = conv_mlp.ext(*leaves)
    out.sum().backward()
    assert_matches_reference(out, want)
    assert all(leaf.grad is not None for leaf in leaves)


def flat_args(target):
    x, w_in, b_in, w_dw, b_dw, w_out, b_out = make_inputs(2, 3, 12, 4, 5, device=target.device)
    return [x, w_in, b_in, w_dw.reshape(12, 9), b_dw, w_out, b_out]


@pytest.mark.parametrize("target", [TRITON])
def test_triton_opcheck(target):
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(conv_mlp.triton_forward, flat_args(target), test_utils=checks)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_ext_opcheck(target):
    torch.library.opcheck(ext_ops.conv_mlp.default, [t.requires_grad_() for t in flat_args(target)])
    x, w_in, b_in, w_dw, b_dw, w_out, _ = flat_args(target)
    grad = torch.randn_like(x)
    torch.library.opcheck(ext_ops.conv_mlp_backward.default, [grad, x, w_in, b_in, w_dw, b_dw, w_out])


@pytest.mark.parametrize("target", [EXT_CPU])
def test_ext_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    x, w_in, b_in, w_dw, b_dw, w_out, b_out = make_inputs(1, 3, 12, 4, 5)
    with pytest.raises(RuntimeError, match="w_out"):
        ext_ops.conv_mlp(x, w_in, b_in, w_dw.reshape(12, 9), b_dw, w_out[:, :5], b_out)
    with pytest.raises(RuntimeError, match="grad"):
        ext_ops.conv_mlp_backward(x[:, :2], x, w_in, b_in, w_dw.reshape(12, 9), b_dw, w_out)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_ext_compiled_fullgraph_matches_eager(target):
    inputs = make_inputs(2, 4, 16, 6, 5, device=target.device)
    compiled = torch.compile(conv_mlp.ext, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in inputs]
    eager_leaves = [t.clone().requires_grad_() for t in inputs]
    got, want = compiled(*leaves), conv_mlp.ext(*eager_leaves)
    torch.testing.assert_close(got, want)
    got.square().sum().backward()
    want.square().sum().backward()
    tolerance = dict(rtol=1e-5, atol=1e-5) if target.device == "cuda" else {}  # CUDA sums weights with atomics
    for mine, theirs in zip(leaves, eager_leaves, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, **tolerance)


# ---------------------------------------------------------------------------------------------
# triton: the backward kernel, low precision, compile
# ---------------------------------------------------------------------------------------------
# (tile pixels, programs, budget, images, H, W): tiles of 4 x 8 pixels with one partial slot per program, all
# programs adding into one slot (a budget too small for more), a single program over every tile; tiles of two
# whole 5 x 7 images, the last one half empty
BACKWARD_CASES = [(32, 3, None, 3, 9, 7), (32, 3, 1, 3, 9, 7), (32, 1, None, 3, 9, 7), (128, 3, None, 5, 5, 7)]


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=["slot-each", "one-slot", "one-program", "two-images-a-tile"])
@pytest.mark.parametrize("target", [TRITON])
def test_triton_backward_kernel_matches_float64(target, case, monkeypatch):
    """The backward op on its own, over several tiles."""
    from avfused.kernels import _common as kernel_common
    from avfused.kernels.conv_mlp import launch_backward

    tile_pixels, programs, budget, images, height, width = case
    monkeypatch.setattr(kernel_common, "INTERPRETER_TILE_PIXELS", tile_pixels)
    monkeypatch.setattr(kernel_common, "INTERPRETER_PROGRAMS", programs)
    x, w_in, b_in, w_dw, b_dw, w_out, b_out = make_inputs(images, 5, 20, height, width, device=target.device)
    grad = torch.randn_like(x)
    grads = launch_backward(grad, x, w_in, b_in, w_dw.reshape(20, 9), b_dw, w_out, budget)
    _, expected = float64_reference(reference.conv_mlp, [x, w_in, b_in, w_dw, b_dw, w_out, b_out], grad)
    for name, mine, theirs in zip(NAMES, grads, expected, strict=True):
        assert_matches_reference(mine.reshape(theirs.shape), theirs, name=f"grad {name}")


MODEL_MLP_SHAPES = [  # (images = batch 4 x 10 frames, C, E, H, W) of the small model's four stages, and batch 1
    (40, 8, 32, 56, 56), (40, 16, 64, 28, 28), (40, 32, 128, 14, 14), (40, 64, 256, 7, 7), (10, 64, 256, 7, 7),
]


@pytest.mark.parametrize("shape", MODEL_MLP_SHAPES)
def test_triton_backward_workspace_within_saved_activations(shape, monkeypatch):
    """On a GPU with 132 SMs, the backward's scratch and partial slots fit in the size of what the forward saved."""
    from avfused.kernels import _common as kernel_common
    from avfused.kernels.conv_mlp import backward_plan

    monkeypatch.setattr(kernel_common, "program_cap", lambda device: 264)
    images, channels, expanded, height, width = shape
    saved = 4 * (images * channels * height * width + 2 * expanded * channels + 11 * expanded)
    plan = backward_plan(torch.Size((images, channels, height, width)), expanded, torch.device("cuda"), saved)
    assert plan["workspace_bytes"] <= saved
    assert plan["programs"] >= min(plan["n_tiles"], 8), plan  # and not one program for everything


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision_within_twice_torch(target, dtype, monkeypatch):
    """fp16 runs fp16 tl.dot (fp32 accumulation) under the interpreter too; bf16 there: bf16 loads, fp32 dots."""
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs = make_inputs(3, 8, 40, 7, 9, device=target.device)
    check_low_precision(conv_mlp.triton, reference.conv_mlp, inputs, NAMES, dtype)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_backward_opcheck(target):
    args = flat_args(target)
    grad = torch.randn_like(args[0])
    torch.library.opcheck(conv_mlp.triton_backward, [grad, *args[:6]], test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("target", [TRITON])
def test_triton_compiled_fullgraph_matches_float64(target):
    """torch.compile(fullgraph=True) traces the forward and backward ops; both against float64."""
    compiled = torch.compile(conv_mlp.triton, fullgraph=True, backend="aot_eager")
    check_against_reference(compiled, reference.conv_mlp, make_inputs(2, 4, 16, 6, 5, device=target.device), NAMES)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_gpu_matches_float64(dtype):
    for inputs in (make_inputs(20, 8, 32, 56, 56, device="cuda"), make_inputs(20, 64, 256, 7, 7, device="cuda")):
        if dtype == torch.float32:
            check_against_reference(conv_mlp.triton, reference.conv_mlp, inputs, NAMES)
        else:
            check_low_precision(conv_mlp.triton, reference.conv_mlp, inputs, NAMES, dtype)


# GPU shapes: the model's stage shapes (N = 20: batch 2 of 10 frames), maps of several tiles with odd
# edges, E not a multiple of the kernel's chunk, one image
GPU_SHAPES = [(20, 8, 32, 56, 56, False), (20, 64, 256, 7, 7, True), (3, 16, 40, 37, 23, False),
              (1, 32, 128, 14, 14, True), (3, 5, 7, 1, 1, False), (1, 3, 12, 5, 40, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_matches_float64(target, shape, dtype):
    inputs = make_inputs(*shape, device="cuda")
    if dtype == torch.float32:
        check_against_reference(conv_mlp.ext, reference.conv_mlp, inputs, NAMES)
    else:
        check_low_precision(conv_mlp.ext, reference.conv_mlp, inputs, NAMES, dtype)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_channels_last_and_views(target):
    inputs = make_inputs(3, 24, 72, 19, 30, device="cuda")
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    check(target, inputs)
    inputs[0] = torch.randn(3, 48, 19, 30, device="cuda")[:, ::2]
    check(target, inputs)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_runs_the_reference_past_its_channel_limit(target, monkeypatch):
    """The CUDA kernels hold every channel of a tile: wider maps take the reference, never an error."""
    monkeypatch.setattr(conv_mlp, "EXT_CUDA_MAX_CHANNELS", 2)
    calls = []
    raw = ext_ops.conv_mlp
    monkeypatch.setattr(ext_ops, "conv_mlp", lambda *args: calls.append(1) or raw(*args), raising=False)
    inputs = make_inputs(2, 4, 16, 9, 13, device="cuda")
    torch.testing.assert_close(conv_mlp.ext(*inputs), reference.conv_mlp(*inputs))
    assert calls == []
