"""Training: the loss recipe, the probes training only themselves, the schedule, the data order, the
augmentations, and exact resume after a planned stop and after Ctrl-C."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_batch, tiny_config

from avfused import SingleStreamNet
from avfused.errors import CheckpointError, ConfigError
from avfused.training.augment import AugmentConfig, AugmentedDataset, hflip, jpeg, time_stretch
from avfused.training.distributed import EpochSampler
from avfused.training.loop import LAST, TrainConfig, Trainer
from avfused.training.losses import LossWeights, detection_loss
from avfused.training.schedule import warmup_linear_factor
from avfused.training.toy import ToyClips

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_is_the_sum_of_the_recipe_terms():
    model = SingleStreamNet(tiny_config()).train()
    video, audio = random_batch(model.config, 4)
    out = model(video, audio)
    labels = torch.tensor([0, 1, 1, 0])
    visual, audio_labels = torch.tensor([0, 1, 0, 0]), torch.tensor([0, -1, 1, 0])
    total, parts = detection_loss(out, labels, visual, audio_labels, LossWeights(0.1, 0.5, 2.0))
    ce = lambda logits, target: F.cross_entropy(logits, target, label_smoothing=0.1, ignore_index=-1)  # noqa: E731
    expected = (
        ce(out.clip, labels)
        + ce(out.visual, visual)
        + ce(out.audio, audio_labels)
        + 0.5 * ce(out.mismatch, torch.ones(4, dtype=torch.long))
        + 2.0 * (ce(out.style_visual, labels) + ce(out.style_audio, labels))
    )
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"clip", "visual", "audio", "mismatch", "probes"}


def test_probe_loss_trains_only_the_probes():
    model = SingleStreamNet(tiny_config()).train()
    video, audio = random_batch(model.config, 4)
    out = model(video, audio)
    probe_loss = F.cross_entropy(out.style_visual, torch.tensor([0, 1, 0, 1])) + out.style_audio.sum()
    probe_loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(n.startswith(("style_visual.", "style_audio.")) for n in with_grad)


def test_schedule_warms_up_then_decays_linearly():
    factors = [warmup_linear_factor(s, 4, 12) for s in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(factors[4:], np.linspace(1.0, 0.0, 9))
    assert warmup_linear_factor(20, 4, 12, final=0.1) == pytest.approx(0.1)


def test_ranks_split_each_global_batch_of_the_same_permutation():
    single = list(EpochSampler(22, 6, seed=3, epoch=1))
    assert len(single) == 18 and len(set(single)) == 18  # 3 whole batches, the rest dropped
    ranks = [list(EpochSampler(22, 6, seed=3, epoch=1, rank=r, world_size=2)) for r in range(2)]
    for batch in range(3):
        merged = ranks[0][batch * 3 : batch * 3 + 3] + ranks[1][batch * 3 : batch * 3 + 3]
        assert merged == single[batch * 6 : batch * 6 + 6]
    assert list(EpochSampler(22, 6, seed=3, epoch=1, start_batch=2)) == single[12:]
    assert list(EpochSampler(22, 6, seed=3, epoch=2)) != single
    with pytest.raises(ConfigError, match="divide"):
        EpochSampler(22, 5, seed=0, epoch=0, world_size=2)


def test_augmentations_do_what_they_say():
    video = torch.rand(3, 3, 32, 32)
    flipped = hflip(video)
    assert torch.equal(flipped[..., 0], video[..., -1])
    low = jpeg(video, 60)
    assert low.shape == video.shape and 0 < (low - video).abs().mean() < 0.25
    assert (jpeg(video, 100) - video).abs().mean() < (low - video).abs().mean()
    tone = torch.sin(torch.arange(1600) * 2 * torch.pi * 100 / 1600)  # 100 periods
    slow = time_stretch(tone, 1.25)  # 1.25 x longer: 80 periods fit in the same length
    fast = time_stretch(tone, 0.8)
    assert slow.shape == fast.shape == tone.shape

    def crossings(x):
        return int(((x[:-1] < 0) & (x[1:] >= 0)).sum())

    assert crossings(slow) == pytest.approx(80, abs=2)
    assert fast[:100].abs().max() == 0  # zero padding around the shorter signal
    assert crossings(fast) == pytest.approx(100, abs=2)


def test_augmentation_depends_on_seed_epoch_and_index_only():
    base = ToyClips(tiny_config(), 6)
    a = AugmentedDataset(base, AugmentConfig(1.0, (60, 100), 1.0, (0.8, 1.25), 0.5), seed=1)
    b = AugmentedDataset(base, AugmentConfig(1.0, (60, 100), 1.0, (0.8, 1.25), 0.5), seed=1)
    torch.manual_seed(123)  # the global RNG plays no part
    first = a[4]
    torch.manual_seed(999)
    b[1], b[2]  # noqa: B018 -- other items first: no shared state
    assert torch.equal(first["video"], b[4]["video"]) and torch.equal(first["audio"], b[4]["audio"])
    a.set_epoch(1)
    assert not torch.equal(first["video"], a[4]["video"])
    assert torch.equal(AugmentedDataset(base, AugmentConfig.off())[4]["video"], base[4]["video"])


def make_trainer(out, **overrides):
    config = tiny_config()
    train_config = TrainConfig(**{"epochs": 2, "batch_size": 4, "progress": False, "seed": 5, **overrides})
    return Trainer(config, train_config, ToyClips(config, 12, seed=0), ToyClips(config, 6, seed=1), out)


def assert_same_weights(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_resume_after_planned_stop_matches_uninterrupted_run(tmp_path):
    whole = make_trainer(tmp_path / "whole")
    whole.fit()
    assert (tmp_path / "whole" / "best.safetensors").is_file() and (tmp_path / "whole" / "metrics.csv").is_file()
    first = make_trainer(tmp_path / "split")
    assert first.fit(stop_after=4) == {"stopped_at": 4}  # mid-epoch 2 (3 steps per epoch)
    second = make_trainer(tmp_path / "split")
    second.fit(resume=tmp_path / "split" / LAST)
    assert second.step == whole.step == 6
    assert_same_weights(whole, second)
    assert [r["loss"] for r in second.history] == [r["loss"] for r in whole.history]


class InterruptingClips(ToyClips):
    """Raises KeyboardInterrupt when item ``at`` is read for the ``times``-th time (a Ctrl-C mid-epoch)."""

    def __init__(self, *args, at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.reads = at, 0

    def __getitem__(self, index):
        if index == self.at:
            self.reads += 1
            if self.reads == 2:
                raise KeyboardInterrupt
        return super().__getitem__(index)


def test_resume_after_ctrl_c_matches_uninterrupted_run(tmp_path):
    whole = make_trainer(tmp_path / "whole")
    whole.fit()
    config = tiny_config()
    interrupted = Trainer(
        config,
        whole.config,
        InterruptingClips(config, 12, seed=0, at=list(EpochSampler(12, 4, seed=5, epoch=1))[5]),
        ToyClips(config, 6, seed=1),
        tmp_path / "split",
    )
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert interrupted.step == 4  # Ctrl-C while loading the second batch of epoch 2
    resumed = make_trainer(tmp_path / "split")
    resumed.fit(resume=tmp_path / "split" / LAST)
    assert_same_weights(whole, resumed)


def test_resume_with_another_recipe_is_refused(tmp_path):
    make_trainer(tmp_path / "a").fit(stop_after=2)
    with pytest.raises(CheckpointError, match="steps"):
        make_trainer(tmp_path / "a", epochs=3).fit(resume=tmp_path / "a" / LAST)
