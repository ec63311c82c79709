"""Model inputs at the API: floating-point inputs of another dtype are cast to the model's, integer ones are
refused by name; video far outside [0, 1] is refused, a little outside it is scored with a warning."""

import warnings

import pytest
import torch
from helpers import random_batch, tiny_config

from avfused import SingleStreamNet
from avfused.errors import InputDtypeError, InputRangeError, InputRangeWarning

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = tiny_config()


@pytest.fixture(scope="module")
def model():
    return SingleStreamNet(CONFIG, backend="torch").eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_floating_inputs_of_another_dtype_are_cast_to_the_models(model, dtype):
    video, audio = (t.to(dtype) for t in random_batch(CONFIG, 2))
    with torch.no_grad():
        got = model(video, audio)
        expected = model(video.float(), audio.float())  # the same values, in the model's dtype
    assert got.clip.dtype == torch.float32
    torch.testing.assert_close(got.clip, expected.clip, rtol=0, atol=0)


def test_a_float64_model_takes_float32_inputs():
    model = SingleStreamNet(CONFIG, backend="torch").double().eval()
    video, audio = random_batch(CONFIG, 2)
    with torch.no_grad():
        got = model(video, audio)
        expected = model(video.double(), audio.double())
    assert got.clip.dtype == torch.float64
    torch.testing.assert_close(got.clip, expected.clip, rtol=0, atol=0)


def test_integer_video_is_refused_by_name(model):
    video, audio = random_batch(CONFIG, 2)
    with pytest.raises(InputDtypeError, match="uint8.*255"):
        model((video * 255).to(torch.uint8), audio)


@pytest.mark.parametrize(
    "kind, words",
    [("0-255", "divide 0-255 frames by 255"), ("normalised", "do not normalise")],
)
def test_video_far_outside_0_1_is_refused(model, kind, words):
    video, audio = random_batch(CONFIG, 2)
    if kind == "0-255":
        video = (video * 255).round()
    else:  # already normalised with ImageNet's mean and std, as other pipelines do
        mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 1, 3, 1, 1)
        video = (video - mean) / torch.tensor([0.229, 0.224, 0.225]).reshape(1, 1, 3, 1, 1)
    with pytest.raises(InputRangeError, match=words):
        model(video, audio)


def test_video_a_little_outside_0_1_is_scored_with_a_warning(model):
    video, audio = random_batch(CONFIG, 2)
    video[0, 0, 0, 0, 0] = 1.05  # e.g. bicubic resizing's overshoot
    with pytest.warns(InputRangeWarning, match="outside"):
        with torch.no_grad():
            got = model(video, audio).clip
    assert torch.isfinite(got).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in [0, 1]: no warning
        model(video.clamp(0, 1), audio)
