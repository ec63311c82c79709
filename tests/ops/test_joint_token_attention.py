"""joint_token_attention, every backend against the float64 reference: forward and all six gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avfused import reference
from avfused.errors import EmptyBatchError, InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import joint_token_attention
from avfused.testing import (
    assert_matches_reference,
    check_against_reference,
    check_low_precision,
    forward_and_grads,
    leaves,
    relative_error,
)
from tests.helpers import EXT_CPU, EXT_CUDA, TARGETS, TRITON, allow_triton_low_precision_on_cpu

NAMES = ("tokens", "pos", "ln_weight", "ln_bias", "lin_weight", "lin_bias")
ext_ops = torch.ops.avfused_ext


def make_inputs(batch, length, dim=49, device="cpu"):
    return [
        torch.randn(batch, length, dim, device=device),
        0.5 * torch.randn(length, dim, device=device),
        1 + 0.2 * torch.randn(dim, device=device),
        0.2 * torch.randn(dim, device=device),
        torch.randn(dim, dim, device=device) / dim**0.5,
        0.2 * torch.randn(dim, device=device),
    ]


def check(target, inputs):
    check_against_reference(target.op(joint_token_attention), reference.joint_token_attention, inputs, NAMES)


def non_contiguous_inputs(device):
    """(2, 19, 49) tokens, pos, ln_weight and lin_weight as strided views."""
    tokens = torch.randn(49, 19, 2, device=device).permute(2, 1, 0)
    pos = torch.randn(49, 19, device=device).t()
    lin_weight = torch.randn(49, 49, device=device).t() / 7
    ln_weight = (1 + 0.2 * torch.randn(98, device=device))[::2]
    inputs = [tokens, pos, ln_weight, 0.2 * torch.randn(49, device=device), lin_weight,
              0.2 * torch.randn(49, device=device)]
    assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous() and not inputs[2].is_contiguous()
    return inputs


# (batch, length, dim): a single token, odd lengths, more than one 64-row block (with a ragged last
# block), L = 650 (the small model's first stage), other token sizes
SHAPES = [(1, 1, 49), (3, 13, 49), (1, 70, 49), (3, 131, 49), (2, 21, 9), (3, 23, 17), (2, 9, 100)]
EXT_SHAPES = SHAPES + [(1, 650, 49), (2, 5, 49), (3, 37, 49)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", TARGETS)
def test_matches_float64(target, shape):
    check(target, make_inputs(*shape, device=target.device))


@pytest.mark.parametrize("narrow", [False, True], ids=["best-isa", "8-lane"])
@pytest.mark.parametrize("shape", EXT_SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_ext_cpu_paths_match_float64(target, shape, narrow, monkeypatch):
    if narrow:  # the AVX2 / baseline code path, also on AVX-512 machines
        monkeypatch.setenv("AVFUSED_CPU_NO_AVX512", "1")
    check(target, make_inputs(*shape))


@pytest.mark.parametrize("target", TARGETS)
def test_peaked_attention_stays_accurate(target):
    """Large LayerNorm gains make the softmax nearly one-hot: tests the online max and rescaling."""
    inputs = make_inputs(2, 77, device=target.device)
    inputs[2] = 4 + torch.rand(49, device=target.device)
    check(target, inputs)


@pytest.mark.parametrize("target", TARGETS)
def test_non_contiguous_inputs(target):
    check(target, non_contiguous_inputs(target.device))


@pytest.mark.parametrize("target", [TRITON, EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    tokens, pos, ln_w, ln_b, lin_w, lin_b = make_inputs(2, 5, device=target.device)
    op = target.op(joint_token_attention)
    with pytest.raises(InputDtypeError, match="int64"):
        op(tokens.long(), pos, ln_w, ln_b, lin_w, lin_b)
    with pytest.raises(InputDeviceError, match="meta"):
        op(tokens, pos, ln_w, ln_b, lin_w.to("meta"), lin_b)
    with pytest.raises(InputRankError, match=r"\(B, L, D\)"):
        op(tokens[0], pos, ln_w, ln_b, lin_w, lin_b)
    with pytest.raises(InputShapeError, match="pos"):
        op(tokens, pos[:4], ln_w, ln_b, lin_w, lin_b)
    with pytest.raises(InputShapeError, match="lin_weight"):
        op(tokens, pos, ln_w, ln_b, lin_w[:, :48], lin_b)
    with pytest.raises(EmptyBatchError, match="non-empty"):
        op(tokens[:0], pos, ln_w, ln_b, lin_w, lin_b)
    with pytest.raises(InputShapeError, match="D <= 128"):
        op(*make_inputs(1, 3, dim=130, device=target.device))


@pytest.mark.parametrize("target", [TRITON])
def test_triton_refuses_float64(target):
    tokens, pos, ln_w, ln_b, lin_w, lin_b = make_inputs(2, 5, device=target.device)
    with pytest.raises(InputDtypeError, match="float64"):
        target.op(joint_token_attention)(tokens, pos.double(), ln_w, ln_b, lin_w, lin_b)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_opcheck(target):
    args = (*make_inputs(2, 11, dim=10, device=target.device), 1e-5)
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(joint_token_attention.triton_forward, args, test_utils=checks)


# Triton in fp16 / bf16. The interpreter runs fp16 kernels as on a GPU (fp16 tl.dot operands, fp32
# accumulation); its bf16 tl.dot is wrong, so there bf16 tokens are loaded and stored as bf16 and multiplied
# in fp32 (kernels/_common.dot_kind): the bf16 dots themselves are checked by the gpu tests.
LOW_PRECISION = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("shape", [(1, 200, 49), (3, 13, 17)])  # 4 blocks (the last ragged); 1 block, D = 17
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision_within_twice_torch(target, dtype, shape, monkeypatch):
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs = make_inputs(*shape, device=target.device)
    check_low_precision(joint_token_attention.triton, reference.joint_token_attention, inputs, NAMES, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision_peaked_attention(target, dtype, monkeypatch):
    """Nearly one-hot softmax: large scores, where fp16 accumulation or an fp16 log-sum-exp would cost many
    times PyTorch's own error."""
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs = make_inputs(2, 77, device=target.device)
    inputs[2] = 4 + torch.rand(49, device=target.device)
    check_low_precision(joint_token_attention.triton, reference.joint_token_attention, inputs, NAMES, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision_non_contiguous(target, dtype, monkeypatch):
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs = non_contiguous_inputs(target.device)
    check_low_precision(joint_token_attention.triton, reference.joint_token_attention, inputs, NAMES, dtype)


def check_low_precision_tokens_float32_parameters(dtype, device):
    """Tokens in dtype, parameters in float32 (as under autocast): out and d_tokens come in dtype, the
    parameters' gradients in float32, each at most twice as far from float64 as PyTorch's own all-``dtype``
    result is from float64 (each against the float64 reference on its own inputs)."""
    inputs = make_inputs(3, 21, device=device)
    inputs[0] = inputs[0].to(dtype)
    grad = torch.randn(3, 21, 49, device=device, dtype=torch.float64)
    ref_out, ref_grads = forward_and_grads(reference.joint_token_attention, leaves(inputs, torch.float64), grad)
    out, grads = forward_and_grads(joint_token_attention.triton, leaves(inputs), grad)
    assert out.dtype == dtype and [g.dtype for g in grads] == [t.dtype for t in inputs]
    rounded = [t.to(dtype) for t in inputs]
    torch_ref_out, torch_ref_grads = forward_and_grads(reference.joint_token_attention,
                                                       leaves(rounded, torch.float64), grad)
    torch_out, torch_grads = forward_and_grads(reference.joint_token_attention, leaves(rounded), grad)
    pairs = zip([out, *grads], [ref_out, *ref_grads], [torch_out, *torch_grads], [torch_ref_out, *torch_ref_grads],
                ("output", *NAMES), strict=True)
    for actual, expected, by_torch, torch_expected, name in pairs:
        error, limit = relative_error(actual, expected), 2 * relative_error(by_torch, torch_expected)
        assert error <= limit, f"{name}: relative error {error:.3e} exceeds {limit:.3e} (2x torch {dtype})"


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision_tokens_with_float32_parameters(target, dtype, monkeypatch):
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    check_low_precision_tokens_float32_parameters(dtype, target.device)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision_opcheck(target, monkeypatch):
    """The fakes promise what the fp16 kernels return: out in fp16, mixed and lse in float32."""
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    tokens, *params = make_inputs(2, 11, dim=10, device=target.device)
    args = (tokens.half(), *params, 1e-5)
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(joint_token_attention.triton_forward, args, test_utils=checks)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_ext_opcheck(target):
    inputs = [t.requires_grad_() for t in make_inputs(2, 11, device=target.device)]
    torch.library.opcheck(ext_ops.joint_token_attention.default, (*inputs, 1e-5))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_ext_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    tokens, _, *rest = make_inputs(1, 5)
    with pytest.raises(RuntimeError, match="pos"):
        ext_ops.joint_token_attention(tokens, torch.randn(4, 49), *rest, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("target", [EXT_CPU])
def test_ext_compiled_fullgraph_matches_eager(target):
    inputs = make_inputs(2, 12)
    compiled = torch.compile(joint_token_attention.ext, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*inputs), joint_token_attention.ext(*inputs))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length", [650, 170, 50, 20])
def test_triton_gpu_matches_float64(dtype, length):
    inputs = make_inputs(4, length, device="cuda")
    fn, reference_fn = joint_token_attention.triton, reference.joint_token_attention
    if dtype == torch.float32:
        check_against_reference(fn, reference_fn, inputs, NAMES)
    else:
        check_low_precision(fn, reference_fn, inputs, NAMES, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("shape", [(1, 650, 49), (3, 131, 49), (3, 70, 17), (1, 200, 64)])
def test_triton_gpu_low_precision_batch_and_sizes(dtype, shape):
    """Batch 1 and 3, lengths with a ragged last block, other token sizes; bf16 here runs bf16 tl.dot."""
    inputs = make_inputs(*shape, device="cuda")
    check_low_precision(joint_token_attention.triton, reference.joint_token_attention, inputs, NAMES, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_triton_gpu_low_precision_non_contiguous_and_float32_parameters(dtype):
    inputs = non_contiguous_inputs("cuda")
    check_low_precision(joint_token_attention.triton, reference.joint_token_attention, inputs, NAMES, dtype)
    check_low_precision_tokens_float32_parameters(dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
def test_triton_gpu_dots_use_tensor_cores_only_in_low_precision(dtype, monkeypatch):
    """Every kernel's PTX has mma instructions for fp16 / bf16 tokens and none for float32 (ieee dots)."""
    from avfused.kernels import joint_token_attention as kernels

    names = ("_joint_attention_forward_kernel", "_attention_backward_query_kernel", "_attention_backward_key_kernel")
    compiled = {}
    for name in names:
        jit = getattr(kernels, name)

        def run(*args, _name=name, _run=jit.run, **kwargs):
            compiled[_name] = _run(*args, **kwargs)
            return compiled[_name]

        monkeypatch.setattr(jit, "run", run)
    inputs = [t.requires_grad_() for t in make_inputs(2, 70, device="cuda")]
    inputs[0] = inputs[0].detach().to(dtype).requires_grad_()
    joint_token_attention.triton(*inputs).sum().backward()
    assert sorted(compiled) == sorted(names)
    for name, kernel in compiled.items():
        assert ("mma" in kernel.asm["ptx"]) == (dtype != torch.float32), name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_triton_gpu_low_precision_opcheck(dtype):
    tokens, *params = make_inputs(2, 11, device="cuda")
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(joint_token_attention.triton_forward, (tokens.to(dtype), *params, 1e-5), test_utils=checks)


@pytest.mark.parametrize("shape", [(1, 650, 49), (3, 170, 49), (2, 1, 49), (3, 131, 17), (2, 70, 64)])
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_matches_float64(target, shape):
    check(target, make_inputs(*shape, device=target.device))


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_serves_wide_tokens_with_the_reference(target, monkeypatch):
    """D > 64 has no CUDA kernel (it would spill registers): the reference runs, never the raw op."""
    monkeypatch.setattr(ext_ops, "joint_token_attention", None, raising=False)
    inputs = make_inputs(2, 9, dim=100, device=target.device)
    torch.testing.assert_close(joint_token_attention.ext(*inputs), reference.joint_token_attention(*inputs))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_low_precision(target, dtype):
    inputs = make_inputs(2, 170, device=target.device)
    check_low_precision(joint_token_attention.ext, reference.joint_token_attention, inputs, NAMES, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_inference_forward_matches_float64(target, dtype):
    """Without autograd the CUDA path runs the inference kernel, which keeps nothing for a backward."""
    inputs = make_inputs(1, 650, device=target.device)  # batch 1 at the small model's first-stage length
    ref = reference.joint_token_attention(*(t.double() for t in inputs))
    args = [inputs[0].to(dtype), *inputs[1:]]
    with torch.no_grad():
        out = joint_token_attention.ext(*args)
        torch_low = reference.joint_token_attention(*(t.to(dtype) for t in inputs))
    assert out.dtype == dtype
    assert_matches_reference(out, ref, None if dtype == torch.float32 else torch_low)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_ext_gpu_training_ops_opcheck(target):
    inputs = [t.requires_grad_() for t in make_inputs(2, 11, device=target.device)]
    torch.library.opcheck(ext_ops.joint_token_attention_train.default, (*inputs, 1e-5))


@pytest.fixture
def cpu_stand_ins_of_the_cuda_training_ops():
    """CPU implementations, in torch, of the two CUDA-only training ops: with them the Python half of the CUDA
    training path (its autograd glue, shapes and dtypes) runs here; the CUDA kernels themselves need a GPU."""
    import math

    def train(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, eps):
        z = tokens.float() + pos
        u = F.layer_norm(z, (z.shape[-1],), ln_weight, ln_bias, eps)
        scores = u @ u.transpose(1, 2) / math.sqrt(z.shape[-1])
        lse = torch.logsumexp(scores, dim=-1)
        mixed = torch.exp(scores - lse[..., None]) @ u
        out = (z + mixed @ lin_weight.t() + lin_bias).to(tokens.dtype)
        return out, F.pad(u, (0, 64 - u.shape[-1])), mixed, lse

    def attend_backward(u, d_mixed, lse, delta):
        dim = d_mixed.shape[-1]
        u = u[..., :dim]
        scale = 1 / math.sqrt(dim)
        probs = torch.exp(u @ u.transpose(1, 2) * scale - lse[..., None])
        d_scores = probs * (d_mixed @ u.transpose(1, 2) - delta[..., None])
        du = probs.transpose(1, 2) @ d_mixed + scale * (d_scores @ u + d_scores.transpose(1, 2) @ u)
        return F.pad(du, (0, 64 - dim)).contiguous()

    library = torch.library.Library("avfused_ext", "IMPL")
    library.impl("joint_token_attention_train", train, "CPU")
    library.impl("joint_token_attention_attend_backward", attend_backward, "CPU")
    yield
    library._destroy()


@pytest.mark.parametrize("shape", [(1, 13, 49), (3, 70, 49), (2, 9, 17)])
@pytest.mark.parametrize("target", [EXT_CPU])
def test_the_cuda_training_path_glue_matches_float64(target, shape, cpu_stand_ins_of_the_cuda_training_ops):
    def through_the_training_op(tokens, *params):
        return ext_ops.joint_token_attention_train(tokens, *params, 1e-5)[0]

    check_against_reference(through_the_training_op, reference.joint_token_attention, make_inputs(*shape), NAMES)
    inputs = [t.requires_grad_() for t in make_inputs(2, 11)]
    torch.library.opcheck(ext_ops.joint_token_attention_train.default, (*inputs, 1e-5))
