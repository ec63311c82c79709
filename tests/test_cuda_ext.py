"""The C++/CUDA extension backend ("cuda") against the float64 reference.

CPU tests need the extension built (pip install --no-build-isolation -e .); GPU tests (marked gpu)
need a CUDA device. Every check uses fresh random inputs and the avfused.testing tolerance rules.

Front end tolerances: log(|y| + 1e-6) is ill-conditioned where a band response y crosses zero, so
in float32 even PyTorch's own reference misses the float64 one by far more than 1e-4 (about 3e-2 at
the default size, most of it from the float32 sinc filter generation both share). So:
  * the kernel itself (op avfused_ext::frontend_stem on given float32 x and filters) is held to the
    1e-4 rule against float64 with a well-conditioned log_eps = 1e-2;
  * the full op at the default log_eps must be no worse than twice PyTorch's own float32 error
    (the rule DESIGN.md uses for low precision).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avfused import reference
from avfused.errors import EmptyBatchError, InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.testing import FP32_RTOL, assert_matches_reference, relative_error

cuda_impl = pytest.importorskip("avfused.ops.cuda_impl")
_CPU_REASON = cuda_impl.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(_CPU_REASON is not None, reason=f"C++ extension not built: {_CPU_REASON}")

ops = torch.ops.avfused_ext if _CPU_REASON is None else None


def _cutoffs(filters: int) -> tuple[torch.Tensor, torch.Tensor]:
    from avfused.nn.frontend import _mel_spaced_cutoffs

    low, band = _mel_spaced_cutoffs(filters, 16000, 50.0, 50.0)
    return low + torch.rand_like(low) * 5, band + torch.rand_like(band) * 5  # fresh, not the init grid


def _frontend_core64(x, filters, weight, log_eps):
    """The reference's conv -> |.| -> log -> mean removal -> stem, in float64 from the given inputs."""
    x, filters, weight = x.double(), filters.double(), weight.double()
    y = F.conv1d(x[:, None], filters[:, None], padding=filters.shape[1] // 2)
    a = torch.log(y.abs() + log_eps)
    a = a - a.mean(dim=2, keepdim=True)
    return F.conv1d(a, weight, stride=reference.STEM_STRIDE, padding=reference.STEM_KERNEL // 2)


def _assert_within_twice_torch(actual, ref64, torch32, name):
    """Front-end rule at the default log_eps: at most 2x PyTorch's float32 error (floor 1e-4)."""
    limit = max(2.0 * relative_error(torch32, ref64), FP32_RTOL)
    error = relative_error(actual, ref64)
    assert error <= limit, f"{name}: relative error {error:.3e} exceeds {limit:.3e} (2x torch float32)"


FRONTEND_SHAPES = [  # (batch, samples, filters, taps, channels): odd lengths, batch 1 and 3
    (1, 1001, 16, 51, 3),
    (3, 777, 10, 101, 5),
    (3, 2050, 8, 251, 8),
    (1, 37, 5, 251, 2),  # clip shorter than the filter
]


# ---------------------------------------------------------------------------------------------
# front end + stem, CPU
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("narrow", [False, True], ids=["best-isa", "8-lane"])
@pytest.mark.parametrize("shape", FRONTEND_SHAPES)
def test_frontend_kernel_forward_and_grads_match_float64(shape, narrow, monkeypatch):
    if narrow:  # the AVX2 / baseline code path, also on AVX-512 machines
        monkeypatch.setenv("AVFUSED_CPU_NO_AVX512", "1")
    batch, samples, filters, taps, channels = shape
    low, band = _cutoffs(filters)
    x = reference.preemphasis_and_norm(torch.randn(batch, samples)).requires_grad_()
    h = reference.sinc_filterbank(low, band, taps).detach().requires_grad_()
    w = (torch.randn(channels, filters, 7) * 0.1).requires_grad_()
    out, band_mean = ops.frontend_stem(x, h, w, 1e-2)
    x64, h64, w64 = (t.detach().double().requires_grad_() for t in (x, h, w))
    ref = _frontend_core64(x64, h64, w64, 1e-2)
    assert_matches_reference(out, ref, name="forward")
    y64 = F.conv1d(x64[:, None].detach(), h64[:, None].detach(), padding=taps // 2)
    assert_matches_reference(band_mean, torch.log(y64.abs() + 1e-2).mean(2), name="band_mean")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.double())
    for name, mine, theirs in (("x", x, x64), ("filters", h, h64), ("stem_weight", w, w64)):
        assert_matches_reference(mine.grad, theirs.grad, name=f"grad {name}")


def test_frontend_kernel_general_filters_match_float64():
    """Filters that are not linear phase take the general (non-symmetric) path."""
    x = torch.randn(2, 500)
    h = torch.randn(6, 31) * 0.2
    w = torch.randn(4, 6, 7)
    assert_matches_reference(ops.frontend_stem(x, h, w, 1e-2)[0], _frontend_core64(x, h, w, 1e-2))


@pytest.mark.parametrize("batch", [1, 3])
def test_frontend_op_matches_reference_at_default_eps(batch):
    samples, filters, channels = 3001, 24, 8
    low, band = _cutoffs(filters)
    wave = torch.randn(batch, samples, requires_grad=True)
    low.requires_grad_()
    band.requires_grad_()
    weight = (torch.randn(channels, filters, 7) * 0.1).requires_grad_()
    inputs = (wave, low, band, weight)
    out = cuda_impl.audio_frontend_stem(*inputs)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref = reference.audio_frontend_stem(*inputs64)
    inputs32 = [t.detach().clone().requires_grad_() for t in inputs]
    torch32 = reference.audio_frontend_stem(*inputs32)
    _assert_within_twice_torch(out, ref, torch32, "forward")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.double())
    torch32.backward(grad)
    names = ("wave", "low_hz", "band_hz", "stem_weight")
    for name, mine, theirs, torchs in zip(names, inputs, inputs64, inputs32, strict=True):
        _assert_within_twice_torch(mine.grad, theirs.grad, torchs.grad, f"grad {name}")


def test_frontend_op_accepts_non_contiguous_inputs():
    low, band = _cutoffs(12)
    wave = torch.randn(1200, 2).t()  # (2, 1200), not contiguous
    weight = torch.randn(12, 7, 5).permute(2, 0, 1)  # (5, 12, 7), not contiguous
    low_nc = torch.stack([low, low], 1)[:, 0]
    assert not wave.is_contiguous() and not weight.is_contiguous() and not low_nc.is_contiguous()
    x = reference.preemphasis_and_norm(wave)
    h = reference.sinc_filterbank(low_nc, band)
    x_nc, h_nc = x.t().contiguous().t(), h.t().contiguous().t()
    assert not x_nc.is_contiguous() and not h_nc.is_contiguous()
    out = ops.frontend_stem(x_nc, h_nc, weight, 1e-2)[0]
    assert_matches_reference(out, _frontend_core64(x, h, weight, 1e-2))
    kw = dict(log_eps=1e-2)
    ref = reference.audio_frontend_stem(wave.double(), low.double(), band.double(), weight.double(), **kw)
    torch32 = reference.audio_frontend_stem(wave, low, band, weight, **kw)
    _assert_within_twice_torch(cuda_impl.audio_frontend_stem(wave, low_nc, band, weight, **kw), ref, torch32, "fwd")


def test_frontend_opcheck():
    low, band = _cutoffs(6)
    x = reference.preemphasis_and_norm(torch.randn(2, 301)).requires_grad_()
    h = reference.sinc_filterbank(low, band, 31).detach().requires_grad_()
    w = torch.randn(3, 6, 7, requires_grad=True)
    torch.library.opcheck(ops.frontend_stem.default, (x, h, w, 1e-2))
    torch.library.opcheck(ops.frontend_stem.default, (x.detach(), h.detach(), w.detach(), 1e-6))


# ---------------------------------------------------------------------------------------------
# joint token attention, CPU
# ---------------------------------------------------------------------------------------------
def _attention_inputs(batch, length, dim, device="cpu"):
    return (
        torch.randn(batch, length, dim, device=device),
        torch.randn(length, dim, device=device) * 0.5,
        1 + 0.1 * torch.randn(dim, device=device),
        0.1 * torch.randn(dim, device=device),
        torch.randn(dim, dim, device=device) / dim**0.5,
        0.1 * torch.randn(dim, device=device),
    )


@pytest.mark.parametrize("narrow", [False, True], ids=["best-isa", "8-lane"])
@pytest.mark.parametrize("shape", [(1, 650, 49), (3, 37, 49), (2, 5, 49), (1, 1, 49), (3, 23, 17), (2, 9, 100)])
def test_attention_forward_and_grads_match_float64(shape, narrow, monkeypatch):
    if narrow:  # the AVX2 / baseline code path, also on AVX-512 machines
        monkeypatch.setenv("AVFUSED_CPU_NO_AVX512", "1")
    inputs = [t.requires_grad_() for t in _attention_inputs(*shape)]
    out = cuda_impl.joint_token_attention(*inputs)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref = reference.joint_token_attention(*inputs64)
    assert_matches_reference(out, ref, name="forward")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.double())
    names = ("tokens", "pos", "ln_weight", "ln_bias", "lin_weight", "lin_bias")
    for name, mine, theirs in zip(names, inputs, inputs64, strict=True):
        assert_matches_reference(mine.grad, theirs.grad, name=f"grad {name}")


def test_attention_accepts_non_contiguous_inputs():
    tokens, pos, ln_w, ln_b, lin_w, lin_b = _attention_inputs(2, 30, 49)
    tokens_nc = tokens.transpose(0, 1).contiguous().transpose(0, 1)
    lin_w_nc = lin_w.t().contiguous().t()
    assert not tokens_nc.is_contiguous() and not lin_w_nc.is_contiguous()
    ref = reference.joint_token_attention(*(t.double() for t in (tokens, pos, ln_w, ln_b, lin_w, lin_b)))
    assert_matches_reference(cuda_impl.joint_token_attention(tokens_nc, pos, ln_w, ln_b, lin_w_nc, lin_b), ref)


def test_attention_opcheck():
    inputs = [t.requires_grad_() for t in _attention_inputs(2, 11, 49)]
    torch.library.opcheck(ops.token_attention.default, (*inputs, 1e-5))


# ---------------------------------------------------------------------------------------------
# bad inputs: Python exceptions, never a crash
# ---------------------------------------------------------------------------------------------
def test_frontend_bad_inputs_raise_named_errors():
    low, band = _cutoffs(8)
    wave, weight = torch.randn(2, 500), torch.randn(4, 8, 7)
    with pytest.raises(InputRankError):
        cuda_impl.audio_frontend_stem(wave[0], low, band, weight)
    with pytest.raises(InputShapeError):
        cuda_impl.audio_frontend_stem(wave, low, band[:-1], weight)
    with pytest.raises(InputShapeError):
        cuda_impl.audio_frontend_stem(wave, low, band, torch.randn(4, 8, 5))
    with pytest.raises(InputDtypeError):
        cuda_impl.audio_frontend_stem(wave.to(torch.int32), low, band, weight)
    with pytest.raises(EmptyBatchError):
        cuda_impl.audio_frontend_stem(wave[:0], low, band, weight)
    with pytest.raises(InputDeviceError):
        cuda_impl.audio_frontend_stem(wave.to("meta"), low, band, weight)


def test_attention_bad_inputs_raise_named_errors():
    tokens, pos, ln_w, ln_b, lin_w, lin_b = _attention_inputs(2, 10, 49)
    with pytest.raises(InputRankError):
        cuda_impl.joint_token_attention(tokens[0], pos, ln_w, ln_b, lin_w, lin_b)
    with pytest.raises(InputShapeError):
        cuda_impl.joint_token_attention(tokens, pos[:-1], ln_w, ln_b, lin_w, lin_b)
    with pytest.raises(InputShapeError):
        cuda_impl.joint_token_attention(tokens, pos, ln_w, ln_b, lin_w[:, :-1], lin_b)
    with pytest.raises(InputDtypeError):
        cuda_impl.joint_token_attention(tokens.long(), pos, ln_w, ln_b, lin_w, lin_b)


def test_raw_ops_reject_bad_inputs_with_runtime_errors():
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    with pytest.raises(RuntimeError, match="float32"):
        ops.frontend_stem(torch.randn(2, 100, dtype=torch.float64), torch.randn(4, 11), torch.randn(3, 4, 7), 1e-6)
    with pytest.raises(RuntimeError, match="odd"):
        ops.frontend_stem(torch.randn(2, 100), torch.randn(4, 10), torch.randn(3, 4, 7), 1e-6)
    with pytest.raises(RuntimeError, match="stem_weight"):
        ops.frontend_stem(torch.randn(2, 100), torch.randn(4, 11), torch.randn(3, 5, 7), 1e-6)
    with pytest.raises(RuntimeError, match="pos"):
        tokens, _, *rest = _attention_inputs(1, 5, 49)
        ops.token_attention(tokens, torch.randn(4, 49), *rest, 1e-5)


# ---------------------------------------------------------------------------------------------
# torch.compile and the backend plumbing
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_fullgraph_matches_eager():
    inputs = _attention_inputs(2, 12, 49)
    low, band = _cutoffs(6)
    wave, weight = torch.randn(1, 400), torch.randn(3, 6, 7)

    def both(tokens, pos, ln_w, ln_b, lin_w, lin_b, wave, low, band, weight):
        return (cuda_impl.joint_token_attention(tokens, pos, ln_w, ln_b, lin_w, lin_b),
                cuda_impl.audio_frontend_stem(wave, low, band, weight, kernel_size=31))

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    args = (*inputs, wave, low, band, weight)
    for got, want in zip(compiled(*args), both(*args), strict=True):
        torch.testing.assert_close(got, want)


def test_backend_reports_cuda_available_on_cpu():
    import avfused

    assert avfused.available_backends("cpu")["cuda"] is None


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
def _gpu_ready() -> None:
    reason = cuda_impl.unavailable_reason(torch.device("cuda"))
    if reason is not None:
        pytest.fail(f"a CUDA device is visible but the CUDA module is not usable: {reason}")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", FRONTEND_SHAPES + [(2, 48000, 256, 251, 8)])
def test_gpu_frontend_kernel_forward_and_grads_match_float64(shape):
    _gpu_ready()
    batch, samples, filters, taps, channels = shape
    low, band = _cutoffs(filters)
    x = reference.preemphasis_and_norm(torch.randn(batch, samples)).cuda().requires_grad_()
    h = reference.sinc_filterbank(low, band, taps).cuda().requires_grad_()
    w = (torch.randn(channels, filters, 7) * 0.1).cuda().requires_grad_()
    out, _ = ops.frontend_stem(x, h, w, 1e-2)
    x64, h64, w64 = (t.detach().cpu().double().requires_grad_() for t in (x, h, w))
    ref = _frontend_core64(x64, h64, w64, 1e-2)
    assert_matches_reference(out.cpu(), ref, name="forward")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.cpu().double())
    for name, mine, theirs in (("x", x, x64), ("filters", h, h64), ("stem_weight", w, w64)):
        assert_matches_reference(mine.grad.cpu(), theirs.grad, name=f"grad {name}")


@pytest.mark.gpu
def test_gpu_frontend_matches_cpu_kernel():
    _gpu_ready()
    low, band = _cutoffs(32)
    x = reference.preemphasis_and_norm(torch.randn(3, 5003))
    h = reference.sinc_filterbank(low, band)
    w = torch.randn(8, 32, 7) * 0.1
    gpu_out, gpu_mean = ops.frontend_stem(x.cuda(), h.cuda(), w.cuda(), 1e-2)
    cpu_out, cpu_mean = ops.frontend_stem(x, h, w, 1e-2)
    assert_matches_reference(gpu_out.cpu(), _frontend_core64(x, h, w, 1e-2), name="forward")
    assert_matches_reference(gpu_mean.cpu(), cpu_mean.double(), name="band_mean")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_frontend_low_precision(dtype):
    _gpu_ready()
    low, band = _cutoffs(32)
    wave, weight = torch.randn(2, 4001), torch.randn(8, 32, 7) * 0.1
    kw = dict(log_eps=1e-2)
    ref = reference.audio_frontend_stem(wave.double(), low.double(), band.double(), weight.double(), **kw)
    args = [t.cuda().to(dtype) for t in (wave, low, band, weight)]
    torch_low = reference.audio_frontend_stem(*args, **kw).cpu()
    assert_matches_reference(cuda_impl.audio_frontend_stem(*args, **kw).cpu(), ref, torch_low)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 650, 49), (3, 170, 49), (2, 1, 49), (3, 131, 17), (2, 70, 100)])
def test_gpu_attention_forward_and_grads_match_float64(shape):
    _gpu_ready()
    inputs = [t.cuda().requires_grad_() for t in _attention_inputs(*shape)]
    out = cuda_impl.joint_token_attention(*inputs)
    inputs64 = [t.detach().cpu().double().requires_grad_() for t in inputs]
    ref = reference.joint_token_attention(*inputs64)
    assert_matches_reference(out.cpu(), ref, name="forward")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.cpu().double())
    names = ("tokens", "pos", "ln_weight", "ln_bias", "lin_weight", "lin_bias")
    for name, mine, theirs in zip(names, inputs, inputs64, strict=True):
        assert_matches_reference(mine.grad.cpu(), theirs.grad, name=f"grad {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_attention_low_precision(dtype):
    _gpu_ready()
    inputs = _attention_inputs(2, 170, 49)
    ref = reference.joint_token_attention(*(t.double() for t in inputs))
    args = [t.cuda().to(dtype) for t in inputs]
    torch_low = reference.joint_token_attention(*args).cpu()
    assert_matches_reference(cuda_impl.joint_token_attention(*args).cpu(), ref, torch_low)


@pytest.mark.gpu
def test_gpu_opcheck():
    _gpu_ready()
    inputs = [t.cuda().requires_grad_() for t in _attention_inputs(2, 11, 49)]
    torch.library.opcheck(ops.token_attention.default, (*inputs, 1e-5))
    low, band = _cutoffs(6)
    x = reference.preemphasis_and_norm(torch.randn(2, 301)).cuda().requires_grad_()
    h = reference.sinc_filterbank(low, band, 31).cuda().requires_grad_()
    w = torch.randn(3, 6, 7, device="cuda", requires_grad=True)
    torch.library.opcheck(ops.frontend_stem.default, (x, h, w, 1e-2))
