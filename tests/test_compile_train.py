"""torch.compile(fullgraph=True) traces SingleStreamNet in train mode (statistics swap, mismatch pairs, drop
path) on each backend that runs here, and the training-only random draws keep their documented distribution:
a swap with probability p per batch, a uniformly random partner permutation, Beta(alpha, alpha) weights,
mismatch partners (i + s) mod B with s uniform on 1..B-1."""

import math

import pytest
import scipy.stats
import torch
from helpers import random_batch, tiny_config

from avfused import SingleStreamNet
from avfused.backends import unavailable_reason
from avfused.nn.style import derangement_partner, draw_statistics_swap, random_statistics_swap, swap_statistics

pytestmark = pytest.mark.usefixtures("one_thread")

# training switches all on, a drop-path rate, one stage: every training branch in a graph that traces fast
CONFIG = tiny_config(widths=(4,), depths=(1,), drop_path=0.2, feature_swap_prob=0.5)
DRAWS = 4000


def _train_outputs(model, video, audio, seed):
    torch.manual_seed(seed)
    out = model(video, audio)
    loss = sum(v.float().square().mean() for v in (out.clip, out.visual, out.audio, out.mismatch, out.style_visual))
    return out, loss


def _check_fullgraph_train_compile(backend, device="cpu"):
    # a fresh dynamo: after another test's compile, tracing the Beta draw met aten::_sample_dirichlet without a
    # fake implementation when test_model_backends' fullgraph Triton model had compiled first in the process)
    torch._dynamo.reset()
    model = SingleStreamNet(CONFIG, backend=backend).to(device).train()
    video, audio = (t.to(device) for t in random_batch(CONFIG, 3))
    # backend="eager": dynamo traces the whole model as one graph (fullgraph raises on any break) without
    # code generation; aot_eager on the whole CPU model trips a PyTorch stride mismatch in BatchNorm's backward.
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    partners = set()
    for seed in range(4):
        got, compiled_loss = _train_outputs(compiled, video, audio, seed)
        want, eager_loss = _train_outputs(model, video, audio, seed)
        # the draws are in the graph, not frozen at trace time: each seed gives eager's outputs
        assert torch.equal(got.mismatch_partner, want.mismatch_partner)
        torch.testing.assert_close(got.clip, want.clip)
        torch.testing.assert_close(got.mismatch, want.mismatch)
        partners.add(tuple(got.mismatch_partner.tolist()))
    assert len(partners) == 2  # B = 3: shifts 1 and 2 both came up
    compiled_loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("style"))


def test_reference_model_compiles_fullgraph_in_train_mode():
    _check_fullgraph_train_compile("torch")


@pytest.mark.skipif(unavailable_reason("cuda", "cpu") is not None, reason="the C++ extension is not built")
def test_cuda_backend_cpu_path_compiles_fullgraph_in_train_mode():
    _check_fullgraph_train_compile("cuda")


# Triton on CPU tensors runs in the interpreter: this test took 90 s there on 2 cores, so it runs on GPUs only
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_fused_model_compiles_fullgraph_in_train_mode_on_gpu(backend):
    if unavailable_reason(backend, "cuda") is not None:
        pytest.skip(f"{backend}: {unavailable_reason(backend, 'cuda')}")
    _check_fullgraph_train_compile(backend, "cuda")


# ---- the distribution of the draws ---------------------------------------------------------------
def _within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_statistics_swap_draws_follow_the_documented_distribution():
    batch, probability, alpha = 4, 0.3, 0.1
    torch.manual_seed(123)
    applied, weights = 0, []
    pair_counts = torch.zeros(batch, batch)
    for _ in range(DRAWS):
        apply, partner, weight = draw_statistics_swap(batch, probability, alpha)
        assert apply.shape == () and apply.dtype == torch.bool
        assert sorted(partner.tolist()) == list(range(batch))  # a permutation
        applied += int(apply)
        pair_counts[torch.arange(batch), partner] += 1
        weights.append(weight)
    assert _within(applied, DRAWS, probability)
    # every clip is paired with every clip (itself included) 1/B of the time, as a uniform permutation does
    for count in pair_counts.flatten().tolist():
        assert _within(int(count), DRAWS, 1 / batch)
    # Beta(alpha, alpha)'s CDF at points across (0, 1), each count binomial; (a KS test would trip over
    # float32's spacing near 1, where Beta(0.1, 0.1) puts a tenth of its mass)
    weights = torch.cat(weights).double()
    beta = scipy.stats.beta(alpha, alpha)
    for x in (1e-6, 1e-3, 0.05, 0.3, 0.5, 0.7, 0.95, 0.999):
        assert _within(int((weights <= x).sum()), weights.numel(), float(beta.cdf(x))), x


def test_random_statistics_swap_applies_the_draw_or_nothing():
    video, audio = torch.randn(4, 3, 2, 5, 5), torch.randn(4, 3, 20)
    outcomes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        apply, partner, weight = draw_statistics_swap(4, 0.5, 0.1)
        torch.manual_seed(seed)
        got_video, got_audio = random_statistics_swap(video, audio, 0.5, 0.1)
        if apply:
            assert torch.equal(got_video, swap_statistics(video, partner, weight))
            assert torch.equal(got_audio, swap_statistics(audio, partner, weight))
        else:
            assert torch.equal(got_video, video) and torch.equal(got_audio, audio)
        outcomes.add(bool(apply))
    assert outcomes == {True, False}


def test_mismatch_partners_are_uniform_cyclic_derangements():
    batch = 5
    torch.manual_seed(7)
    shifts = torch.zeros(batch, dtype=torch.long)
    for _ in range(DRAWS):
        partner = derangement_partner(batch)
        assert not (partner == torch.arange(batch)).any()  # nobody is paired with itself
        shift = int((partner[0] - 0) % batch)
        assert torch.equal(partner, (torch.arange(batch) + shift) % batch)
        shifts[shift] += 1
    assert shifts[0] == 0
    for count in shifts[1:].tolist():
        assert _within(count, DRAWS, 1 / (batch - 1))


def test_train_forward_swaps_about_as_often_as_configured():
    """The model's forward uses the draw: with feature_swap_prob 0.3, about 30 % of batches come out
    different from the same model with the swap off (same seed, same weights)."""
    config = tiny_config(widths=(4,), depths=(1,), feature_swap_prob=0.3, mismatch_pairing=False, style_heads=False)
    swapping = SingleStreamNet(config, backend="torch").train()
    plain = SingleStreamNet(config.replace(feature_swap=False), backend="torch").train()
    plain.load_state_dict(swapping.state_dict())
    video, audio = random_batch(config, 2)
    runs, swapped = 100, 0
    with torch.no_grad():
        for seed in range(runs):
            torch.manual_seed(seed)
            a = swapping(video, audio).clip
            torch.manual_seed(seed)
            b = plain(video, audio).clip
            swapped += int(not torch.equal(a, b))
    assert _within(swapped, runs, 0.3)
