"""large_kernel_attention, every backend against the float64 reference: forward and every gradient.

The extension's ops (``avfused_ext::large_kernel_attention`` and its ``_backward``) run C++ kernels on the
CPU and CUDA kernels on GPUs, in training too; the ``ext-cuda`` and ``gpu`` tests need a GPU session.
"""

from __future__ import annotations

import pytest
import torch

from avfused import reference
from avfused.errors import EmptyBatchError, InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import large_kernel_attention
from avfused.testing import assert_matches_reference, check_against_reference, check_low_precision
from tests.helpers import EXT_CPU, EXT_CUDA, TARGETS, TRITON, allow_triton_low_precision_on_cpu, float64_reference

NAMES = ("p", "w5", "b5", "w7", "b7", "w1", "b1")
ext_ops = torch.ops.avfused_ext


def make_inputs(images, channels, height, width, conv_1x1=False, device="cpu"):
    w1 = torch.randn(channels, channels, device=device) / channels**0.5
    return [
        torch.randn(images, channels, height, width, device=device),
        torch.randn(channels, 1, 5, 5, device=device) / 5,
        0.1 * torch.randn(channels, device=device),
        torch.randn(channels, 1, 7, 7, device=device) / 7,
        0.1 * torch.randn(channels, device=device),
        w1[:, :, None, None] if conv_1x1 else w1,
        0.1 * torch.randn(channels, device=device),
    ]


def check(target, inputs):
    """The wrapper's forward and every gradient; for ext also its inference (no autograd) forward."""
    fn = target.op(large_kernel_attention)
    if target.backend == "ext":
        with torch.no_grad():
            out = fn(*inputs)
        assert out.dtype == inputs[0].dtype
        assert_matches_reference(out, reference.large_kernel_attention(*(t.double() for t in inputs)), name="forward")
    check_against_reference(fn, reference.large_kernel_attention, inputs, NAMES)


# (images, channels, height, width, 1x1 weight as a conv): odd maps, maps smaller than the 19x19 dilated
# footprint and than one vector, C = 3, > 16 channels (two Triton blocks), one and three images
SHAPES = [(1, 5, 7, 9, False), (3, 20, 6, 11, True)]
EXT_SHAPES = SHAPES + [(1, 3, 9, 13, False), (3, 5, 1, 1, True), (3, 8, 17, 23, False), (1, 16, 7, 7, True),
                       (2, 4, 20, 40, False)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", TARGETS)
def test_matches_float64(target, shape):
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
    inputs = make_inputs(2, 6, 9, 8)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[5] = inputs[5].t()
    inputs = target.put(inputs)
    assert not inputs[0].is_contiguous() and not inputs[5].is_contiguous()
    check(target, inputs)
    inputs[0] = inputs[0].transpose(2, 3).contiguous().transpose(2, 3)  # a transposed view
    check(target, inputs)


@pytest.mark.parametrize("target", [TRITON, EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    lka = make_inputs(1, 4, 5, 5, device=target.device)
    op = target.op(large_kernel_attention)
    with pytest.raises(InputRankError, match=r"\(N, C, H, W\)"):
        op(lka[0][0], *lka[1:])
    with pytest.raises(InputShapeError, match="w5"):
        op(lka[0][:, :3], *lka[1:])  # channel mismatch
    with pytest.raises(InputShapeError, match="w7"):
        op(*lka[:3], lka[3][:, :, :5, :5], *lka[4:])
    with pytest.raises(InputDtypeError, match="int64"):
        op(lka[0].long(), *lka[1:])
    with pytest.raises(EmptyBatchError, match="non-empty"):
        op(lka[0][:0], *lka[1:])
    with pytest.raises(InputDeviceError, match="meta"):
        op(*(t.to("meta") for t in lka))
    with pytest.raises(InputDeviceError, match="one device"):
        op(*lka[:6], lka[6].to("meta"))


@pytest.mark.parametrize("target", [TRITON])
def test_triton_refuses_float64(target):
    lka = make_inputs(1, 4, 5, 5, device=target.device)
    with pytest.raises(InputDtypeError, match="float64"):
        target.op(large_kernel_attention)(lka[0].double(), *lka[1:])


@pytest.mark.parametrize("target", [EXT_CPU])
def test_ext_float64_inputs_give_float64_outputs(target):
    inputs = make_inputs(1, 3, 6, 5)
    out = target.op(large_kernel_attention)(*(t.double() for t in inputs))
    assert out.dtype == torch.float64
    assert_matches_reference(out.float(), reference.large_kernel_attention(*(t.double() for t in inputs)))


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_ext_trains_through_its_own_kernels(target, monkeypatch):
    """Forward and backward run the extension's ops, never the reference (which would be far slower)."""
    inputs = make_inputs(2, 3, 6, 5, device=target.device)
    want = reference.large_kernel_attention(*(t.double() for t in inputs))

    def refuse(*args):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(reference, "large_kernel_attention", refuse)
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = large_kernel_attention.ext(*leaves)
    out.sum().backward()
    assert_matches_reference(out, want)
    assert all(leaf.grad is not None for leaf in leaves)


def flat_args(target):
    p, w5, b5, w7, b7, w1, b1 = make_inputs(2, 3, 5, 4, device=target.device)
    return [p, w5.reshape(3, 25), b5, w7.reshape(3, 49), b7, w1, b1]


@pytest.mark.parametrize("target", [TRITON])
def test_triton_opcheck(target):
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(large_kernel_attention.triton_forward, flat_args(target), test_utils=checks)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_ext_opcheck(target):
    torch.library.opcheck(ext_ops.large_kernel_attention.default, [t.requires_grad_() for t in flat_args(target)])
    args = flat_args(target)
    grad = torch.randn_like(args[0])
    torch.library.opcheck(ext_ops.large_kernel_attention_backward.default, [grad, *args])


@pytest.mark.parametrize("target", [EXT_CPU])
def test_ext_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    p, w5, b5, w7, b7, w1, b1 = make_inputs(1, 3, 5, 4)
    with pytest.raises(RuntimeError, match="w5"):
        ext_ops.large_kernel_attention(p, w5, b5, w7.reshape(3, 49), b7, w1, b1)  # w5 not flattened
    with pytest.raises(RuntimeError, match="float32"):
        ext_ops.large_kernel_attention(p.double(), w5.reshape(3, 25), b5, w7.reshape(3, 49), b7, w1, b1)
    with pytest.raises(RuntimeError, match="grad"):
        ext_ops.large_kernel_attention_backward(p[:, :, :4], p, w5.reshape(3, 25), b5, w7.reshape(3, 49), b7, w1, b1)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_ext_compiled_fullgraph_matches_eager(target):
    inputs = make_inputs(2, 4, 6, 5, device=target.device)
    compiled = torch.compile(large_kernel_attention.ext, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in inputs]
    eager_leaves = [t.clone().requires_grad_() for t in inputs]
    got, want = compiled(*leaves), large_kernel_attention.ext(*eager_leaves)
    torch.testing.assert_close(got, want)
    got.square().sum().backward()
    want.square().sum().backward()
    tolerance = dict(rtol=1e-5, atol=1e-5) if target.device == "cuda" else {}  # CUDA sums weights with atomics
    for mine, theirs in zip(leaves, eager_leaves, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, **tolerance)


# ---------------------------------------------------------------------------------------------
# triton: the kernels' tiles and programs, low precision, compile
# ---------------------------------------------------------------------------------------------
# (tile pixels, images, C, H, W, budget): 2 x 2 tiles of 8 x 8 whose 9- and 11-pixel halos span the map, each
# program with its own partial slot or all adding into one (a budget too small for more); and tiles of two
# whole 5 x 7 images each, the last one half empty
TILE_CASES = [(64, 1, 5, 11, 13, None), (64, 1, 5, 11, 13, 1), (128, 5, 4, 5, 7, None)]


@pytest.mark.parametrize("case", TILE_CASES, ids=["slot-each", "one-slot", "two-images-a-tile"])
@pytest.mark.parametrize("target", [TRITON])
def test_triton_kernels_over_tiles_match_float64(target, case, monkeypatch):
    """Forward and backward kernels over several tiles, three persistent programs."""
    from avfused.kernels import _common as kernel_common
    from avfused.kernels.large_kernel_attention import launch_backward, launch_forward

    tile_pixels, images, channels, height, width, budget = case
    monkeypatch.setattr(kernel_common, "INTERPRETER_TILE_PIXELS", tile_pixels)
    monkeypatch.setattr(kernel_common, "INTERPRETER_PROGRAMS", 3)
    p, w5, b5, w7, b7, w1, b1 = make_inputs(images, channels, height, width, device=target.device)
    flat = [p, w5.reshape(channels, 25), b5, w7.reshape(channels, 49), b7, w1, b1]
    grad = torch.randn_like(p)
    expected_out, expected = float64_reference(reference.large_kernel_attention, [p, w5, b5, w7, b7, w1, b1], grad)
    assert_matches_reference(launch_forward(*flat), expected_out, name="forward")
    grads = launch_backward(grad, *flat, budget_bytes=budget)
    for name, mine, theirs in zip(NAMES, grads, expected, strict=True):
        assert_matches_reference(mine.reshape(theirs.shape), theirs, name=f"grad {name}")


MODEL_LKA_SHAPES = [  # (images = batch 4 x 10 frames, C, H, W) of the small model's four stages, and batch 1
    (40, 8, 56, 56), (40, 16, 28, 28), (40, 32, 14, 14), (40, 64, 7, 7), (10, 64, 7, 7),
]


@pytest.mark.parametrize("shape", MODEL_LKA_SHAPES)
def test_triton_workspace_within_saved_activations(shape, monkeypatch):
    """On a GPU with 132 SMs: the backward's scratch and partial slots fit in the size of what the forward
    saved (p and the weights), the forward's scratch in the size of p (a c1 tensor)."""
    from avfused.kernels import _common as kernel_common
    from avfused.kernels.large_kernel_attention import backward_plan, forward_plan

    monkeypatch.setattr(kernel_common, "program_cap", lambda device: 264)
    images, channels, height, width = shape
    saved = 4 * (images * channels * height * width + channels * (channels + 77))
    size, gpu = torch.Size(shape), torch.device("cuda")
    plan = backward_plan(size, gpu, saved)
    assert plan["workspace_bytes"] <= saved
    assert plan["programs"] >= min(plan["n_tiles"], 8), plan  # and not one program for everything
    assert forward_plan(size, gpu)["workspace_bytes"] <= 4 * size.numel()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision_within_twice_torch(target, dtype, monkeypatch):
    """fp16 runs fp16 tl.dot (fp32 accumulation) under the interpreter too; bf16 there: bf16 loads, fp32 dots."""
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs = make_inputs(1, 20, 7, 9, device=target.device)
    check_low_precision(large_kernel_attention.triton, reference.large_kernel_attention, inputs, NAMES, dtype)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_backward_opcheck(target):
    args = flat_args(target)
    grad = torch.randn_like(args[0])
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(large_kernel_attention.triton_backward, [grad, *args], test_utils=checks)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_compiled_fullgraph_matches_float64(target):
    """torch.compile(fullgraph=True) traces the forward and backward ops; both against float64."""
    compiled = torch.compile(large_kernel_attention.triton, fullgraph=True, backend="aot_eager")
    check_against_reference(compiled, reference.large_kernel_attention, make_inputs(1, 4, 6, 5, device=target.device),
                            NAMES)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_gpu_matches_float64(dtype):
    for inputs in (make_inputs(20, 8, 56, 56, device="cuda"), make_inputs(20, 64, 7, 7, device="cuda")):
        fn, reference_fn = large_kernel_attention.triton, reference.large_kernel_attention
        if dtype == torch.float32:
            check_against_reference(fn, reference_fn, inputs, NAMES)
        else:
            check_low_precision(fn, reference_fn, inputs, NAMES, dtype)


# GPU shapes: the model's stage shapes (N = 20: batch 2 of 10 frames), maps of several tiles with odd
# edges, maps smaller than the 19x19 footprint, one image
GPU_SHAPES = [(20, 8, 56, 56, False), (20, 64, 7, 7, True), (3, 16, 37, 23, False), (1, 32, 14, 14, True),
              (3, 5, 1, 1, False), (1, 3, 5, 40, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_matches_float64(target, shape, dtype):
    inputs = make_inputs(*shape, device="cuda")
    fn, reference_fn = large_kernel_attention.ext, reference.large_kernel_attention
    if dtype == torch.float32:
        check_against_reference(fn, reference_fn, inputs, NAMES)
    else:
        check_low_precision(fn, reference_fn, inputs, NAMES, dtype)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_channels_last_and_views(target):
    inputs = make_inputs(3, 24, 19, 30, device="cuda")
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    check(target, inputs)
    inputs[0] = torch.randn(3, 48, 19, 30, device="cuda")[:, ::2]
    check(target, inputs)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_runs_the_reference_past_its_channel_limit(target, monkeypatch):
    """The CUDA kernels hold every channel of a tile: wider maps take the reference, never an error."""
    monkeypatch.setattr(large_kernel_attention, "EXT_CUDA_MAX_CHANNELS", 2)
    calls = []
    raw = ext_ops.large_kernel_attention
    monkeypatch.setattr(ext_ops, "large_kernel_attention", lambda *args: calls.append(1) or raw(*args), raising=False)
    inputs = make_inputs(2, 4, 9, 13, device="cuda")
    torch.testing.assert_close(large_kernel_attention.ext(*inputs), reference.large_kernel_attention(*inputs))
    assert calls == []
