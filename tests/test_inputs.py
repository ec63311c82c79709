"""Every bad model input raises its named error with what was expected and what came."""

import pytest
import torch

from avfused import SingleStreamNet
from avfused.errors import (
    EmptyBatchError,
    InputDtypeError,
    InputError,
    InputRankError,
    InputShapeError,
    NonFiniteInputError,
)
from avfused.inputs import all_finite
from tests.helpers import random_batch, tiny_config

CONFIG = tiny_config()


@pytest.fixture(scope="module")
def model():
    return SingleStreamNet(CONFIG).eval()


def _bad(kind):
    video, audio = random_batch(CONFIG, 2)
    if kind == "video rank":
        return video[0], audio
    if kind == "audio rank":
        return video, audio[:, None, :]
    if kind == "channels":
        return video[:, :, :2], audio
    if kind == "frames":
        return torch.cat([video, video[:, :1]], dim=1), audio
    if kind == "pixels":
        return video[..., :-1, :-1], audio
    if kind == "samples":
        return video, audio[:, :-1]
    if kind == "batch mismatch":
        return video, audio[:1]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, error, words",
    [
        ("video rank", InputRankError, "5 dimensions"),
        ("audio rank", InputRankError, "2 dimensions"),
        ("channels", InputShapeError, "3, 30, 30"),
        ("frames", InputShapeError, "T=3"),
        ("pixels", InputShapeError, "got \\(2, 3, 3, 29, 29\\)"),
        ("samples", InputShapeError, f"{CONFIG.num_samples} samples"),
        ("batch mismatch", InputShapeError, "2 clips but audio has 1"),
    ],
)
def test_wrong_shapes(model, kind, error, words):
    with pytest.raises(error, match=words):
        model(*_bad(kind))


@pytest.mark.parametrize("which", ["video", "audio"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values(model, which, value):
    video, audio = random_batch(CONFIG, 2)
    (video if which == "video" else audio).view(-1)[7] = value
    with pytest.raises(NonFiniteInputError, match=which):
        model(video, audio)


def test_empty_batch(model):
    video, audio = random_batch(CONFIG, 2)
    with pytest.raises(EmptyBatchError):
        model(video[:0], audio[:0])


def test_integer_frames_and_non_tensors(model):
    video, audio = random_batch(CONFIG, 2)
    with pytest.raises(InputDtypeError, match="floating-point"):
        model((video * 255).to(torch.uint8), audio)
    with pytest.raises(InputDtypeError, match="torch.Tensor"):
        model(video.numpy(), audio)


def test_input_errors_are_value_errors(model):
    # Callers that catch ValueError keep working.
    assert issubclass(InputError, ValueError)
    with pytest.raises(ValueError):
        model(*_bad("samples"))


def test_all_finite_when_a_sum_of_finite_values_overflows():
    """The one-pass check falls back to the element-wise one when the finite values overflow their sum."""
    huge = torch.full((5,), 3e38)
    assert not torch.isfinite(huge.sum()) and all_finite(huge)
    huge[3] = float("nan")
    assert not all_finite(huge)
    half = torch.full((40_000,), 60_000.0, dtype=torch.float16)  # the float16 sum would overflow
    assert all_finite(half)
    half[-1] = float("-inf")
    assert not all_finite(half)
