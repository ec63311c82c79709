"""The reference building blocks as stand-alone torch.nn modules: shapes and defining properties."""

import math

import pytest
import torch

from avfused import ModelConfig, reference
from avfused.errors import ConfigError, InputShapeError
from avfused.nn import (
    SAAVM,
    VPM,
    AudioFrontEnd,
    AudioStem,
    CAVLBlock,
    ClassificationModule,
    ConvMLP,
    FrameMix,
    LargeKernelAttention,
)
from tests.helpers import tiny_config


def test_audio_front_end_and_stem_shapes():
    config = tiny_config()
    wave = torch.randn(2, config.num_samples)
    assert AudioFrontEnd(config)(wave).shape == (2, 8, config.num_samples)
    stem = AudioStem(config, channels=5)
    assert stem(wave).shape == (2, 5, math.ceil(config.num_samples / 4))


def test_front_end_output_has_zero_mean_over_time():
    config = tiny_config()
    bands = AudioFrontEnd(config)(torch.randn(3, config.num_samples))
    assert bands.mean(dim=2).abs().max() < 1e-4


def test_sinc_filters_pass_their_band_and_stop_outside_it():
    sr, taps = 16000, 251
    low, band = torch.tensor([950.0]), torch.tensor([1950.0])  # 1000 Hz .. 3000 Hz after the 50 Hz minimums
    h = reference.sinc_filterbank(low, band, taps, sr).double()[0]
    freqs = torch.tensor([2000.0, 300.0, 6000.0], dtype=torch.float64)
    n = torch.arange(taps, dtype=torch.float64)
    response = (h * torch.exp(-2j * math.pi * freqs[:, None] * n / sr)).sum(dim=1).abs()
    gain = sr / (2 * 2000.0)  # centre tap normalised to 1
    assert abs(response[0] / gain - 1.0) < 0.02, response
    assert response[1] / gain < 0.02 and response[2] / gain < 0.02, response
    assert h[taps // 2] == 1.0
    assert torch.allclose(h, h.flip(0)), "linear phase: filters are symmetric"


def test_preemphasis_and_norm_matches_its_definition():
    wave = torch.randn(2, 100, dtype=torch.float64)
    out = reference.preemphasis_and_norm(wave, 0.97, eps=0.0)
    y = wave.clone()
    y[:, 1:] = wave[:, 1:] - 0.97 * wave[:, :-1]
    expected = (y - y.mean(1, keepdim=True)) / y.std(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(out, expected)


def test_frame_mix_images_layout_matches_its_definition():
    """to_images / from_images: out[:, :, s] = sum_t W[s, t] x[:, :, t], in float64 from the definition."""
    mix = FrameMix(3).double()
    with torch.no_grad():
        mix.weight.normal_()
    x = torch.randn(2, 5, 3, 4, 7, dtype=torch.float64)
    expected = torch.einsum("st,bcthw->bcshw", mix.weight, x)
    images = mix.to_images(x)
    assert images.shape == (6, 5, 4, 7)
    torch.testing.assert_close(images, expected.transpose(1, 2).reshape(6, 5, 4, 7))
    back = mix.from_images(x.transpose(1, 2).reshape(6, 5, 4, 7), batch=2)
    torch.testing.assert_close(back, expected)
    torch.testing.assert_close(mix(x), expected)

def test_vpm_parts_keep_shapes():
    x = torch.randn(2, 6, 3, 9, 11)
    assert FrameMix(3)(x).shape == x.shape
    assert torch.equal(FrameMix(3)(x), x), "frame mixing starts as the identity"
    assert VPM(6, 3)(x).shape == x.shape
    frames = torch.randn(4, 6, 9, 11)
    assert LargeKernelAttention(6)(frames).shape == frames.shape
    assert ConvMLP(6)(frames).shape == frames.shape


def test_saavm_and_cavl_keep_shapes():
    video, audio = torch.randn(2, 4, 3, 9, 11), torch.randn(2, 4, 50)
    tokens = 3 * 2 * 2 + 3
    v, a = SAAVM(4, 3, tokens)(video, audio)
    assert v.shape == video.shape and a.shape == audio.shape
    v, a = CAVLBlock(4, 3, tokens)(video, audio)
    assert v.shape == video.shape and a.shape == audio.shape
    with pytest.raises(InputShapeError, match="num_tokens"):
        SAAVM(4, 3, tokens + 1)(video, audio)


def test_classification_module_shapes():
    visual, audio, clip = ClassificationModule(4)(torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 40))
    assert visual.shape == audio.shape == clip.shape == (3, 2)


def test_video_tokens_round_trip_and_padding():
    maps = torch.randn(2, 3, 9, 16)
    tokens = reference.video_to_tokens(maps, 7)
    assert tokens.shape == (2, 3 * 2 * 3, 49)
    assert torch.equal(reference.tokens_to_video(tokens, 3, 9, 16, 7), maps)
    # token 0 of frame 0 is the top-left 7x7 window, row-major
    assert torch.equal(tokens[0, 0].reshape(7, 7), maps[0, 0, :7, :7])


def test_audio_tokens_pool_one_token_per_frame():
    signal = torch.arange(3 * 49 * 2, dtype=torch.float32)[None]
    tokens = reference.audio_to_tokens(signal, 3, 49)
    assert tokens.shape == (1, 3, 49)
    assert torch.equal(tokens[0, 1, 0], (signal[0, 98] + signal[0, 99]) / 2)
    assert reference.tokens_to_audio(tokens, 300).shape == (1, 300)


def test_joint_attention_matches_an_explicit_loop():
    tokens, pos = torch.randn(2, 5, 49, dtype=torch.float64), torch.randn(5, 49, dtype=torch.float64)
    ln_w, ln_b = torch.rand(49, dtype=torch.float64), torch.randn(49, dtype=torch.float64)
    lin_w, lin_b = torch.randn(49, 49, dtype=torch.float64), torch.randn(49, dtype=torch.float64)
    out = reference.joint_token_attention(tokens, pos, ln_w, ln_b, lin_w, lin_b)
    for b in range(2):
        for i in range(5):
            z = tokens[b] + pos
            u = (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, unbiased=False, keepdim=True) + 1e-5) * ln_w + ln_b
            weights = torch.tensor([math.exp(float(u[i] @ u[j]) / 7.0) for j in range(5)], dtype=torch.float64)
            mixed = (weights[:, None] * u).sum(0) / weights.sum()
            torch.testing.assert_close(out[b, i], z[i] + lin_w @ mixed + lin_b)


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(clip_seconds=0.01), "shorter than the 251-tap"),
        (dict(sinc_kernel_size=250), "odd"),
        (dict(widths=(8, 16), depths=(1,)), "equal length"),
        (dict(frames=0), "frames"),
    ],
)
def test_config_that_cannot_work_is_a_named_error(changes, words):
    with pytest.raises(ConfigError, match=words):
        ModelConfig(**changes)


def test_config_round_trips_through_a_dict():
    config = ModelConfig.large(frames=6)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({**config.to_dict(), "bogus": 1})
