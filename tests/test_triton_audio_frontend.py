"""Triton audio_frontend_stem against the float64 reference: forward and the gradient of every input."""

import pytest
import torch

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import triton_audio_frontend, triton_impl
from tests.test_triton_support import (
    DEVICE,
    check_against_reference,
    check_low_precision,
    on_triton_device,  # noqa: F401  (autouse: tests run on the Triton device)
)

NAMES = ("wave", "low_hz", "band_hz", "stem_weight")
# (batch, samples, filters, taps, channels): S % 4 != 0, several output tiles, several tap chunks,
# two filter blocks, a clip shorter than the filter
CASES = [(1, 203, 8, 31, 5), (3, 150, 40, 71, 3), (2, 37, 6, 51, 4)]


def make_inputs(batch, samples, filters, channels, device="cpu"):
    wave = torch.randn(batch, samples, device=device)
    low_hz = torch.rand(filters, device=device) * 3000
    band_hz = torch.rand(filters, device=device) * 1500
    stem_weight = torch.randn(channels, filters, 7, device=device) / filters**0.5
    return [wave, low_hz, band_hz, stem_weight]


@pytest.fixture
def small_backward_chunks(monkeypatch):
    """Force the chunked backward to use many chunks, so chunk seams are tested."""
    monkeypatch.setattr(triton_audio_frontend, "BACKWARD_CHUNK_ELEMENTS", 4 * 8 * 40 * 5)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_well_conditioned(case, small_backward_chunks):
    batch, samples, filters, taps, channels = case
    check_against_reference(
        triton_impl.audio_frontend_stem,
        reference.audio_frontend_stem,
        make_inputs(batch, samples, filters, channels),
        NAMES,
        kernel_size=taps,
        log_eps=1e-2,
    )


@pytest.mark.parametrize("case", CASES[:2])
def test_matches_reference_at_default_log_eps(case):
    """log(|y| + 1e-6) magnifies rounding near y = 0: PyTorch's own fp32 misses 1e-4 there too."""
    batch, samples, filters, taps, channels = case
    check_against_reference(
        triton_impl.audio_frontend_stem,
        reference.audio_frontend_stem,
        make_inputs(batch, samples, filters, channels),
        NAMES,
        conditioned_by_torch=True,
        kernel_size=taps,
    )


def test_non_contiguous_inputs():
    wave = torch.randn(90, 2).t()  # (2, 90), stride (1, 2)
    low_hz = (torch.rand(2 * 6) * 3000)[::2]
    band_hz = (torch.rand(2 * 6) * 1500)[::2]
    stem_weight = torch.randn(6, 4, 7).transpose(0, 1)  # (4, 6, 7)
    assert not wave.is_contiguous() and not stem_weight.is_contiguous()
    check_against_reference(
        triton_impl.audio_frontend_stem,
        reference.audio_frontend_stem,
        [wave, low_hz, band_hz, stem_weight],
        NAMES,
        kernel_size=21,
        log_eps=1e-2,
    )


def test_opcheck_frontend_stem_op():
    x = torch.randn(2, 45)
    filters = torch.randn(6, 11)
    stem_weight = torch.randn(3, 6, 7)
    args = (x, filters, stem_weight, 1e-2)
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(triton_audio_frontend.frontend_stem, args, test_utils=checks)


def test_bad_inputs_raise_named_errors():
    wave, low_hz, band_hz, stem_weight = make_inputs(2, 64, 4, 3)
    op = triton_impl.audio_frontend_stem
    with pytest.raises(InputDtypeError, match="float64"):
        op(wave.double(), low_hz, band_hz, stem_weight, kernel_size=11)
    with pytest.raises(InputDeviceError, match="meta"):
        op(wave, low_hz, band_hz, stem_weight.to("meta"), kernel_size=11)
    with pytest.raises(InputRankError, match=r"\(B, S\)"):
        op(wave[0], low_hz, band_hz, stem_weight, kernel_size=11)
    with pytest.raises(InputShapeError, match="band_hz"):
        op(wave, low_hz, band_hz[:3], stem_weight, kernel_size=11)
    with pytest.raises(InputShapeError, match=r"\(C, F, 7\)"):
        op(wave, low_hz, band_hz, stem_weight[:, :, :5], kernel_size=11)
    with pytest.raises(InputShapeError, match="odd"):
        op(wave, low_hz, band_hz, stem_weight, kernel_size=10)


def test_backend_is_available_where_the_tests_run():
    assert triton_impl.unavailable_reason(torch.device(DEVICE)) is None
    reason = triton_impl.unavailable_reason(torch.device("mps"))
    assert reason is not None and "mps" in reason


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_matches_reference(dtype):
    inputs = make_inputs(2, 4003, 64, 32, device="cuda")
    kwargs = dict(kernel_size=129, log_eps=1e-2)
    if dtype == torch.float32:
        check_against_reference(triton_impl.audio_frontend_stem, reference.audio_frontend_stem, inputs, NAMES, **kwargs)
    else:
        check_low_precision(
            triton_impl.audio_frontend_stem, reference.audio_frontend_stem, inputs, NAMES, dtype, **kwargs
        )
