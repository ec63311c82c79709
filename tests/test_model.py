"""SingleStreamNet: parameter counts, output shapes, determinism, training switches, gradients."""

import pytest
import torch
import torch.nn.functional as F

from avfused import ModelConfig, SingleStreamNet
from avfused.errors import WeightShapeMismatchError
from tests.helpers import random_batch, tiny_config


def test_small_preset_has_the_papers_parameter_count():
    counts = SingleStreamNet(ModelConfig.small()).parameter_counts()
    assert abs(counts["inference"] - 480_000) <= 0.03 * 480_000, counts
    assert 0 < counts["training_only"] < 0.01 * counts["inference"]


def test_large_preset_parameter_count():
    counts = SingleStreamNet(ModelConfig.large()).parameter_counts()
    assert abs(counts["inference"] - 6_400_000) <= 0.05 * 6_400_000, counts


def test_training_only_heads_are_not_counted_without_them():
    with_probes = SingleStreamNet(tiny_config()).parameter_counts()
    without = SingleStreamNet(tiny_config(style_heads=False)).parameter_counts()
    assert without["training_only"] == 0
    assert without["inference"] == with_probes["inference"]


@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes_and_probabilities(batch):
    config = tiny_config()
    model = SingleStreamNet(config).eval()
    out = model(*random_batch(config, batch))
    for logits in (out.clip, out.visual, out.audio):
        assert logits.shape == (batch, 2)
    assert out.mismatch is None and out.style_visual is None
    probs = model.predict_proba(*random_batch(config, batch))
    for p in (probs.clip, probs.visual, probs.audio):
        assert p.shape == (batch,) and bool(((p >= 0) & (p <= 1)).all())


def test_default_input_runs_through_the_small_model():
    config = ModelConfig.small()
    model = SingleStreamNet(config).eval()
    with torch.no_grad():
        out = model(*random_batch(config, 1))
    assert out.clip.shape == (1, 2) and torch.isfinite(out.clip).all()


def test_eval_is_deterministic():
    config = tiny_config(drop_path=0.3)
    model = SingleStreamNet(config).eval()
    video, audio = random_batch(config, 3)
    first, second = model(video, audio), model(video, audio)
    assert torch.equal(first.clip, second.clip) and torch.equal(first.audio, second.audio)


def test_predict_proba_restores_training_mode():
    config = tiny_config()
    model = SingleStreamNet(config).train()
    model.predict_proba(*random_batch(config, 2))
    assert model.training


def _twin_models(**switches):
    on = SingleStreamNet(tiny_config(feature_swap_prob=1.0))
    off = SingleStreamNet(tiny_config(feature_swap=False, mismatch_pairing=False, style_heads=False, **switches))
    off.load_state_dict(on.state_dict(), strict=False)
    return on, off


def test_training_switches_change_training_outputs_only():
    on, off = _twin_models()
    video, audio = random_batch(on.config, 4)
    on.eval(), off.eval()
    eval_on, eval_off = on(video, audio), off(video, audio)
    assert torch.equal(eval_on.clip, eval_off.clip)
    on.train(), off.train()
    torch.manual_seed(1)
    train_on = on(video, audio)
    torch.manual_seed(1)
    train_off = off(video, audio)
    assert not torch.allclose(train_on.clip, train_off.clip)
    assert train_on.mismatch is not None and train_on.mismatch.shape == (4, 2)
    assert bool((train_on.mismatch_partner != torch.arange(4)).all())
    assert train_on.style_visual.shape == (4, 2) and train_on.style_audio.shape == (4, 2)
    assert train_off.mismatch is None and train_off.style_visual is None


def test_mismatch_pairs_reuse_the_clip_head_on_swapped_audio():
    config = tiny_config(feature_swap=False)
    model = SingleStreamNet(config).train()
    video, audio = random_batch(config, 3)
    torch.manual_seed(5)
    out = model(video, audio)
    partner = out.mismatch_partner
    # Recompute the pairing from the pooled features (BN in train mode, so recompute on the same batch).
    torch.manual_seed(5)
    v, a = model.features(video, audio)
    f_v, f_a = model.classifier.features(v, a)
    expected = model.classifier.clip_head(torch.cat([f_v, f_a[partner]], dim=1))
    torch.testing.assert_close(out.mismatch, expected)


def test_gradient_reaches_every_parameter():
    config = tiny_config(drop_path=0.0)
    model = SingleStreamNet(config).train()
    video, audio = random_batch(config, 4)
    out = model(video, audio)
    labels = torch.tensor([0, 1, 0, 1])
    loss = sum(F.cross_entropy(logits, labels) for logits in (out.clip, out.visual, out.audio))
    loss = loss + F.cross_entropy(out.mismatch, torch.ones(4, dtype=torch.long))
    loss = loss + F.cross_entropy(out.style_visual, labels) + F.cross_entropy(out.style_audio, labels)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    # a bias right before a training-mode batch norm: the batch mean takes it away again (zero in exact
    # arithmetic, so it may come out exactly zero)
    cancelled = (".saavm.video_squeeze.0.bias", ".saavm.audio_squeeze.0.bias")
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0 and not n.endswith(cancelled)]
    assert not zero, zero


def test_style_probes_do_not_send_gradient_into_the_backbone():
    config = tiny_config()
    model = SingleStreamNet(config).train()
    out = model(*random_batch(config, 2))
    out.style_visual.sum().backward()
    assert model.style_visual.head.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("style_"))


def test_loading_weights_for_another_input_size_is_a_named_error():
    source = SingleStreamNet(tiny_config())
    target = SingleStreamNet(tiny_config(image_size=60))
    with pytest.raises(WeightShapeMismatchError, match="position embeddings"):
        target.load_state_dict(source.state_dict())


def test_backend_is_set_on_every_hot_module():
    model = SingleStreamNet(tiny_config(), backend="torch")
    hot = [m for m in model.modules() if hasattr(m, "backend") and m is not model]
    assert len(hot) >= 4 and all(m.backend == "torch" for m in hot)
