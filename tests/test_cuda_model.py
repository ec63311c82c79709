"""SingleStreamNet with backend="cuda" (the C++ extension) against backend="torch" and float64.

Eval-mode outputs of every head, and the gradients of every parameter, of a tiny model. The rule is
the front end's (see test_cuda_ext.py): at most twice PyTorch's own float32 error against float64,
with a floor of 1e-4, because log(|y| + 1e-6) magnifies float32 rounding in any implementation.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import random_batch, tiny_config

from avfused import SingleStreamNet, backends
from avfused.testing import FP32_RTOL, relative_error

cuda_impl = pytest.importorskip("avfused.ops.cuda_impl")
_REASON = cuda_impl.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"C++ extension not built: {_REASON}")

HEADS = ("clip", "visual", "audio")


def _check(actual, ref64, torch32, name):
    limit = max(2.0 * relative_error(torch32, ref64), FP32_RTOL)
    error = relative_error(actual, ref64)
    assert error <= limit, f"{name}: relative error {error:.3e} exceeds {limit:.3e}"


def _run(model, video, audio):
    model.zero_grad()
    out = model(video, audio)
    (out.clip.sum() + out.visual.square().sum() + out.audio.sum()).backward()
    return out, {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def test_cuda_backend_serves_the_fused_ops():
    for op in ("audio_frontend_stem", "joint_token_attention"):
        assert backends.get_op(op, "cuda", "cpu") is getattr(cuda_impl, op)


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_model_cuda_backend_matches_torch(batch):
    torch.manual_seed(batch)
    config = tiny_config()
    model = SingleStreamNet(config, backend="torch").eval()
    video, audio = random_batch(config, batch)
    ref64, grads64 = _run(copy.deepcopy(model).double(), video.double(), audio.double())
    torch32, grads32 = _run(model, video, audio)
    model.backend = "cuda"
    ours, grads = _run(model, video, audio)
    for head in HEADS:
        _check(getattr(ours, head), getattr(ref64, head), getattr(torch32, head), head)
    assert grads.keys() == grads64.keys()
    for name in grads:
        _check(grads[name], grads64[name], grads32[name], f"grad {name}")


@pytest.mark.gpu
def test_tiny_model_cuda_backend_on_gpu_matches_torch():
    torch.manual_seed(0)
    config = tiny_config()
    model = SingleStreamNet(config, backend="torch").eval()
    video, audio = random_batch(config, 2)
    ref64, grads64 = _run(copy.deepcopy(model).double(), video.double(), audio.double())
    torch32, grads32 = _run(copy.deepcopy(model).cuda(), video.cuda(), audio.cuda())
    model = model.cuda()
    model.backend = "cuda"
    ours, grads = _run(model, video.cuda(), audio.cuda())
    for head in HEADS:
        _check(getattr(ours, head).cpu(), getattr(ref64, head), getattr(torch32, head).cpu(), head)
    for name in grads:
        _check(grads[name].cpu(), grads64[name], grads32[name].cpu(), f"grad {name}")
