"""large_kernel_attention_residual, the extension's C++ kernel against the float64 reference.

The kernel is a CPU forward for the inference-folded VPM (no Triton or CUDA kernel): its gradients are
checked on the raw op ``avfused_ext::large_kernel_attention_residual``, whose autograd recomputes through
the reference.
"""

from __future__ import annotations

import pytest
import torch

from avfused import reference
from avfused.errors import EmptyBatchError, InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import large_kernel_attention_residual
from tests.helpers import (
    EXT_CPU,
    EXT_CUDA,
    check_float64_in_float64_out,
    check_forward_only_ext,
    check_wrapper_runs_reference_under_autograd,
    opcheck_forward_only,
)

NAMES = ("x", "w_in", "b_in", "w5", "b5", "w7", "b7", "w1", "b1", "w_out")
ext_ops = torch.ops.avfused_ext


def make_inputs(images, channels, height, width, conv_1x1=False, device="cpu"):
    def square():
        w = torch.randn(channels, channels, device=device) / channels**0.5
        return w[:, :, None, None] if conv_1x1 else w

    return [
        torch.randn(images, channels, height, width, device=device),
        square(),
        0.1 * torch.randn(channels, device=device),
        torch.randn(channels, 1, 5, 5, device=device) / 5,
        0.1 * torch.randn(channels, device=device),
        torch.randn(channels, 1, 7, 7, device=device) / 7,
        0.1 * torch.randn(channels, device=device),
        square(),
        0.1 * torch.randn(channels, device=device),
        square(),
    ]


def check(inputs):
    check_forward_only_ext(large_kernel_attention_residual, inputs, names=NAMES)


# (images, channels, height, width, 1x1 weights as convs): planes of several whole row chunks and a partial
# vector (the staged last vector), a plane smaller than one vector, a 1x1 image, maps smaller than the 19x19
# dilated footprint, channel counts that fill no whole block of output channels (4 and 2 at a time), one and
# three images
SHAPES = [
    (1, 8, 30, 29, False),
    (3, 5, 13, 11, True),
    (1, 3, 1, 1, False),
    (3, 7, 3, 4, False),
    (1, 16, 7, 7, True),
    (3, 9, 20, 37, False),
    (1, 1, 8, 8, False),
]


@pytest.mark.parametrize("lanes", ["best-isa", "8-lane", "16-lane"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_matches_float64(target, shape, lanes, monkeypatch):
    if lanes == "8-lane":  # the AVX2 / baseline code path, also on AVX-512 machines
        monkeypatch.setenv("AVFUSED_CPU_NO_AVX512", "1")
    if lanes == "16-lane":  # the 16-lane code, built for the baseline ISA where the CPU lacks AVX-512
        monkeypatch.setenv("AVFUSED_CPU_PORTABLE_WIDE", "1")
    check(make_inputs(*shape))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_is_the_large_kernel_attention_between_two_pointwise_convolutions(target):
    """The op against the model's own layers, not the reference: the VPM's proj_in + ReLU, its attention
    module and proj_out (no bias) with the residual, all in float64."""
    from avfused.nn import VPM

    torch.manual_seed(0)
    vpm = VPM(6, frames=1, backend="torch").double().eval()
    x = torch.randn(2, 6, 9, 10, dtype=torch.float64)
    lka = vpm.attention
    with torch.no_grad():
        expected = x + torch.nn.functional.conv2d(lka(torch.relu(vpm.proj_in(x))), vpm.proj_out.weight)
        out = large_kernel_attention_residual.ext(
            x.float(), vpm.proj_in.weight.float(), vpm.proj_in.bias.float(), lka.dw5.weight.float(),
            lka.dw5.bias.float(), lka.dw7.weight.float(), lka.dw7.bias.float(), lka.pw.weight.float(),
            lka.pw.bias.float(), vpm.proj_out.weight.float())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_non_contiguous_inputs(target):
    inputs = make_inputs(2, 6, 9, 8)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[1], inputs[9] = inputs[1].t(), inputs[9].t()
    assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    check(inputs)
    inputs[0] = torch.randn(2, 12, 9, 8)[:, ::2]  # a channel slice
    inputs[2] = torch.randn(12)[::2]
    check(inputs)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    inputs = make_inputs(1, 4, 5, 5)
    op = large_kernel_attention_residual.ext

    def call(**changes):
        args = dict(zip(NAMES, inputs, strict=True))
        args.update(changes)
        return op(*args.values())

    with pytest.raises(InputRankError, match=r"x .*\(N, C, H, W\)"):
        call(x=inputs[0][0])
    with pytest.raises(EmptyBatchError):
        call(x=inputs[0][:0])
    with pytest.raises(InputShapeError, match="w_in"):
        call(x=inputs[0][:, :3])  # channel mismatch: the first weight checked names itself
    for name, bad in (("w_in", inputs[1][:, :3]), ("b_in", inputs[2][:3]), ("w5", inputs[3][..., :3]),
                      ("w7", inputs[5][..., :5]), ("w1", inputs[7][:3]), ("b1", inputs[8][:2]),
                      ("w_out", inputs[9][:, :2])):
        with pytest.raises(InputShapeError, match=name):
            call(**{name: bad})
    with pytest.raises(InputDtypeError, match="int32"):
        call(x=inputs[0].to(torch.int32))
    with pytest.raises(InputDeviceError, match="meta"):
        call(w_out=inputs[9].to("meta"))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_float64_inputs_give_float64_outputs(target):
    check_float64_in_float64_out(large_kernel_attention_residual, make_inputs(1, 5, 9, 12))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_wrapper_runs_the_reference_where_autograd_records(target, monkeypatch):
    check_wrapper_runs_reference_under_autograd(large_kernel_attention_residual, make_inputs(1, 5, 9, 12), (),
                                                monkeypatch)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_opcheck(target):
    c = 3
    inputs = make_inputs(2, c, 7, 6)
    flat = [inputs[0], inputs[1], inputs[2], inputs[3].reshape(c, 25), inputs[4], inputs[5].reshape(c, 49),
            *inputs[6:]]
    opcheck_forward_only(large_kernel_attention_residual, flat)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    c = 4
    inputs = make_inputs(1, c, 8, 8)
    flat = [inputs[0], inputs[1], inputs[2], inputs[3].reshape(c, 25), inputs[4], inputs[5].reshape(c, 49),
            *inputs[6:]]
    with pytest.raises(RuntimeError, match="w_out"):
        ext_ops.large_kernel_attention_residual(*flat[:9], flat[9][:, :2].contiguous())
    with pytest.raises(RuntimeError, match="w5"):
        ext_ops.large_kernel_attention_residual(*flat[:3], flat[3][:, :24].contiguous(), *flat[4:])
    with pytest.raises(RuntimeError, match="float32"):
        ext_ops.large_kernel_attention_residual(flat[0].double(), *flat[1:])


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_tensors_run_the_reference(target):
    """No CUDA kernel for this op: CUDA tensors take the reference, never a dispatcher error."""
    inputs = make_inputs(2, 6, 17, 15, device="cuda")
    torch.testing.assert_close(large_kernel_attention_residual.ext(*inputs),
                               reference.large_kernel_attention_residual(*inputs))
