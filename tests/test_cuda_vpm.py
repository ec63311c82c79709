"""The "cuda" backend's VPM ops (C++ CPU kernels) against the float64 reference: forward and every gradient.

large_kernel_attention and conv_mlp have a fused C++ forward on the CPU; the op's backward recomputes
through the reference, and where autograd records the wrappers run the reference directly. CPU tests
need the extension built (pip install --no-build-isolation -e .). Fresh random inputs, the fp32 rule of
avfused.testing (1e-4 relative to the float64 reference).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from helpers import random_batch, tiny_config

from avfused import SingleStreamNet, backends, reference
from avfused.errors import EmptyBatchError, InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.testing import FP32_RTOL, assert_matches_reference, relative_error

cuda_impl = pytest.importorskip("avfused.ops.cuda_impl")
_CPU_REASON = cuda_impl.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(_CPU_REASON is not None, reason=f"C++ extension not built: {_CPU_REASON}")

ops = torch.ops.avfused_ext if _CPU_REASON is None else None

LKA_NAMES = ("p", "w5", "b5", "w7", "b7", "w1", "b1")
MLP_NAMES = ("x", "w_in", "b_in", "w_dw", "b_dw", "w_out", "b_out")


def lka_inputs(images, channels, height, width, conv_1x1=False):
    w1 = torch.randn(channels, channels) / channels**0.5
    return [
        torch.randn(images, channels, height, width),
        torch.randn(channels, 1, 5, 5) / 5,
        0.1 * torch.randn(channels),
        torch.randn(channels, 1, 7, 7) / 7,
        0.1 * torch.randn(channels),
        w1[:, :, None, None] if conv_1x1 else w1,
        0.1 * torch.randn(channels),
    ]


def mlp_inputs(images, channels, expanded, height, width, conv_1x1=False):
    w_in = torch.randn(expanded, channels) / channels**0.5
    w_out = torch.randn(channels, expanded) / expanded**0.5
    return [
        torch.randn(images, channels, height, width),
        w_in[:, :, None, None] if conv_1x1 else w_in,
        0.1 * torch.randn(expanded),
        torch.randn(expanded, 1, 3, 3) / 3,
        0.1 * torch.randn(expanded),
        w_out[:, :, None, None] if conv_1x1 else w_out,
        0.1 * torch.randn(channels),
    ]


def lka_op(p, w5, b5, w7, b7, w1, b1):
    """The raw op (C++ forward, backward through the reference) on the module's weight shapes."""
    c = p.shape[1]
    return ops.large_kernel_attention(p, w5.reshape(c, 25), b5, w7.reshape(c, 49), b7, w1.reshape(c, c), b1)


def mlp_op(x, w_in, b_in, w_dw, b_dw, w_out, b_out):
    c, e = x.shape[1], w_in.shape[0]
    return ops.conv_mlp(x, w_in.reshape(e, c), b_in, w_dw.reshape(e, 9), b_dw, w_out.reshape(c, e), b_out)


def check_against_float64(fn, op, reference_fn, inputs, names):
    """The wrapper's C++ forward (inference) and the raw op's forward and every input's gradient, within
    the fp32 rule of the float64 reference. (Where autograd records, the wrapper itself runs the
    reference: test_wrappers_run_the_reference_where_autograd_records.)"""
    with torch.no_grad():
        out = fn(*inputs)
    ref = reference_fn(*(t.double() for t in inputs))
    assert out.dtype == torch.float32
    assert_matches_reference(out, ref, name="forward")
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    leaves64 = [t.detach().double().requires_grad_() for t in inputs]
    out = op(*leaves)
    ref = reference_fn(*leaves64)
    assert_matches_reference(out, ref, name="op forward")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.double())
    for name, mine, theirs in zip(names, leaves, leaves64, strict=True):
        assert_matches_reference(mine.grad, theirs.grad, name=f"grad {name}")


def test_wrappers_run_the_reference_where_autograd_records(monkeypatch):
    """Training takes the reference (the op's backward would recompute through it anyway); inference the C++."""
    calls = []
    for name in ("large_kernel_attention", "conv_mlp"):
        raw = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *args, _raw=raw, _name=name: calls.append(_name) or _raw(*args),
                            raising=False)
    lka, mlp = lka_inputs(1, 3, 6, 5), mlp_inputs(1, 3, 12, 6, 5)
    with torch.no_grad():
        cuda_impl.large_kernel_attention(*lka), cuda_impl.conv_mlp(*mlp)
    assert calls == ["large_kernel_attention", "conv_mlp"]
    calls.clear()
    lka[0].requires_grad_()
    mlp[1].requires_grad_()
    cuda_impl.large_kernel_attention(*lka), cuda_impl.conv_mlp(*mlp)
    assert calls == []


# (images, channels, height, width, 1x1 weight as a conv): odd maps, maps smaller than the 19x19 dilated
# footprint and than one vector, C = 3, one and three images
LKA_SHAPES = [(1, 3, 9, 13, False), (3, 5, 1, 1, True), (3, 8, 17, 23, False), (1, 16, 7, 7, True),
              (2, 4, 20, 40, False)]


@pytest.mark.parametrize("narrow", [False, True], ids=["best-isa", "8-lane"])
@pytest.mark.parametrize("shape", LKA_SHAPES)
def test_large_kernel_attention_matches_float64(shape, narrow, monkeypatch):
    if narrow:  # the AVX2 / baseline code path, also on AVX-512 machines
        monkeypatch.setenv("AVFUSED_CPU_NO_AVX512", "1")
    inputs = lka_inputs(*shape)
    check_against_float64(cuda_impl.large_kernel_attention, lka_op, reference.large_kernel_attention, inputs, LKA_NAMES)


# (images, channels, expanded, height, width, 1x1 weights as convs): E not a multiple of the channel group
MLP_SHAPES = [(1, 3, 12, 9, 13, False), (3, 5, 20, 1, 1, True), (3, 3, 7, 6, 11, False), (1, 16, 64, 7, 7, True),
              (2, 4, 16, 20, 40, False)]


@pytest.mark.parametrize("narrow", [False, True], ids=["best-isa", "8-lane"])
@pytest.mark.parametrize("shape", MLP_SHAPES)
def test_conv_mlp_matches_float64(shape, narrow, monkeypatch):
    if narrow:
        monkeypatch.setenv("AVFUSED_CPU_NO_AVX512", "1")
    inputs = mlp_inputs(*shape)
    check_against_float64(cuda_impl.conv_mlp, mlp_op, reference.conv_mlp, inputs, MLP_NAMES)


def test_non_contiguous_inputs():
    lka = lka_inputs(2, 6, 9, 8)
    lka[0] = lka[0].transpose(2, 3).contiguous().transpose(2, 3)  # a transposed view
    lka[5] = lka[5].t().contiguous().t()
    assert not lka[0].is_contiguous() and not lka[5].is_contiguous()
    check_against_float64(cuda_impl.large_kernel_attention, lka_op, reference.large_kernel_attention, lka, LKA_NAMES)
    mlp = mlp_inputs(2, 4, 16, 5, 7)
    mlp[0] = torch.randn(2, 8, 5, 7)[:, ::2]  # a channel slice
    mlp[1] = mlp[1].t().contiguous().t()
    assert not mlp[0].is_contiguous() and not mlp[1].is_contiguous()
    check_against_float64(cuda_impl.conv_mlp, mlp_op, reference.conv_mlp, mlp, MLP_NAMES)


def test_float64_inputs_give_float64_outputs():
    inputs = lka_inputs(1, 3, 6, 5)
    out = cuda_impl.large_kernel_attention(*(t.double() for t in inputs))
    assert out.dtype == torch.float64
    assert_matches_reference(out.float(), reference.large_kernel_attention(*(t.double() for t in inputs)))


def test_opcheck_vpm_ops():
    p, w5, b5, w7, b7, w1, b1 = (t.requires_grad_() for t in lka_inputs(2, 3, 5, 4))
    torch.library.opcheck(ops.large_kernel_attention.default, (p, w5.reshape(3, 25), b5, w7.reshape(3, 49), b7, w1, b1))
    x, w_in, b_in, w_dw, b_dw, w_out, b_out = (t.requires_grad_() for t in mlp_inputs(2, 3, 12, 4, 5))
    torch.library.opcheck(ops.conv_mlp.default, (x, w_in, b_in, w_dw.reshape(12, 9), b_dw, w_out, b_out))


def test_compiled_fullgraph_matches_eager():
    lka, mlp = lka_inputs(2, 4, 6, 5), mlp_inputs(2, 4, 16, 6, 5)

    def both(lka, mlp):
        return cuda_impl.large_kernel_attention(*lka) + cuda_impl.conv_mlp(*mlp)

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    leaves = [[t.clone().requires_grad_() for t in group] for group in (lka, mlp)]
    eager_leaves = [[t.clone().requires_grad_() for t in group] for group in (lka, mlp)]
    got, want = compiled(*leaves), both(*eager_leaves)
    torch.testing.assert_close(got, want)
    got.square().sum().backward()
    want.square().sum().backward()
    for mine, theirs in zip(sum(leaves, []), sum(eager_leaves, []), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad)


# ---------------------------------------------------------------------------------------------
# bad inputs: named Python exceptions, never a crash
# ---------------------------------------------------------------------------------------------
def test_large_kernel_attention_bad_inputs_raise_named_errors():
    lka = lka_inputs(1, 4, 5, 5)
    with pytest.raises(InputRankError, match=r"\(N, C, H, W\)"):
        cuda_impl.large_kernel_attention(lka[0][0], *lka[1:])
    with pytest.raises(InputShapeError, match="w5"):
        cuda_impl.large_kernel_attention(lka[0][:, :3], *lka[1:])  # channel mismatch
    with pytest.raises(InputShapeError, match="w7"):
        cuda_impl.large_kernel_attention(*lka[:3], lka[3][:, :, :5, :5], *lka[4:])
    with pytest.raises(InputDtypeError):
        cuda_impl.large_kernel_attention(lka[0].long(), *lka[1:])
    with pytest.raises(EmptyBatchError):
        cuda_impl.large_kernel_attention(lka[0][:0], *lka[1:])
    with pytest.raises(InputDeviceError, match="meta"):
        cuda_impl.large_kernel_attention(*(t.to("meta") for t in lka))
    with pytest.raises(InputDeviceError, match="one device"):
        cuda_impl.large_kernel_attention(*lka[:6], lka[6].to("meta"))


def test_conv_mlp_bad_inputs_raise_named_errors():
    mlp = mlp_inputs(1, 4, 16, 5, 5)
    with pytest.raises(InputRankError, match=r"\(N, C, H, W\)"):
        cuda_impl.conv_mlp(mlp[0][0], *mlp[1:])
    with pytest.raises(InputShapeError, match="w_in"):
        cuda_impl.conv_mlp(mlp[0], mlp[1][:, :3], *mlp[2:])  # channel mismatch
    with pytest.raises(InputShapeError, match="w_out"):
        cuda_impl.conv_mlp(*mlp[:5], mlp[5][:, :15], mlp[6])
    with pytest.raises(InputShapeError, match="x"):
        cuda_impl.conv_mlp(mlp[0][:, :, :0], *mlp[1:])
    with pytest.raises(InputDtypeError):
        cuda_impl.conv_mlp(*mlp[:3], mlp[3].to(torch.int32), *mlp[4:])
    with pytest.raises(InputDeviceError, match="meta"):
        cuda_impl.conv_mlp(*(t.to("meta") for t in mlp))


def test_raw_ops_reject_bad_inputs_with_runtime_errors():
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    p, w5, b5, w7, b7, w1, b1 = lka_inputs(1, 3, 5, 4)
    with pytest.raises(RuntimeError, match="w5"):
        ops.large_kernel_attention(p, w5, b5, w7.reshape(3, 49), b7, w1, b1)  # w5 not flattened
    with pytest.raises(RuntimeError, match="float32"):
        ops.large_kernel_attention(p.double(), w5.reshape(3, 25), b5, w7.reshape(3, 49), b7, w1, b1)
    x, w_in, b_in, w_dw, b_dw, w_out, b_out = mlp_inputs(1, 3, 12, 4, 5)
    with pytest.raises(RuntimeError, match="w_out"):
        ops.conv_mlp(x, w_in, b_in, w_dw.reshape(12, 9), b_dw, w_out[:, :5], b_out)


# ---------------------------------------------------------------------------------------------
# the backend and the whole model
# ---------------------------------------------------------------------------------------------
def test_cuda_backend_serves_the_vpm_ops_on_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="avfused"):
        for op in ("large_kernel_attention", "conv_mlp"):
            assert backends.get_op(op, "cuda", "cpu") is getattr(cuda_impl, op)
    assert "using the torch reference" not in caplog.text


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_model_eval_matches_torch(batch):
    """Eval outputs of backend="cuda" against float64, at most 2x backend="torch"'s float32 error (floor 1e-4).

    The front end's log(|y| + 1e-6) magnifies float32 rounding in any implementation (see test_cuda_model.py).
    """
    torch.manual_seed(batch)
    config = tiny_config()
    model = SingleStreamNet(config, backend="torch").eval()
    video, audio = random_batch(config, batch)
    with torch.no_grad():
        ref64 = copy.deepcopy(model).double()(video.double(), audio.double())
        torch32 = model(video, audio)
        model.backend = "cuda"
        ours = model(video, audio)
    for head in ("clip", "visual", "audio"):
        ref, theirs, mine = getattr(ref64, head), getattr(torch32, head), getattr(ours, head)
        limit = max(2.0 * relative_error(theirs, ref), FP32_RTOL)
        assert relative_error(mine, ref) <= limit, head


def test_bench_does_not_time_the_reference_as_the_gpu_cuda_backend():
    from avfused.bench.variants import _reference_on_device

    assert _reference_on_device("conv_mlp", "cuda", torch.device("cuda"))
    assert not _reference_on_device("conv_mlp", "cuda", torch.device("cpu"))
    assert not _reference_on_device("joint_token_attention", "cuda", torch.device("cuda"))


@pytest.mark.gpu
def test_gpu_tensors_run_the_reference():
    """No CUDA kernel for these ops: CUDA tensors take the reference, never a dispatcher error."""
    for fn, reference_fn, inputs in ((cuda_impl.large_kernel_attention, reference.large_kernel_attention,
                                      lka_inputs(2, 4, 9, 13)),
                                     (cuda_impl.conv_mlp, reference.conv_mlp, mlp_inputs(2, 4, 16, 9, 13))):
        inputs = [t.cuda() for t in inputs]
        torch.testing.assert_close(fn(*inputs), reference_fn(*inputs))
