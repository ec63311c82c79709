"""Drop-in use: the README's example network built from avfused.nn blocks (its own widths, a backend per
module) runs and trains; torch.hub loads the presets and a checkpoint; SingleStreamNet.from_checkpoint."""

import re
from pathlib import Path

import pytest
import torch
from helpers import random_batch, tiny_config

from avfused import ModelConfig, SingleStreamNet, backends
from avfused.checkpoint import save_checkpoint
from avfused.testing import relative_error

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- integration-example -->\n```python\n(.*?)```", readme, re.S)
    assert match, "README.md lost its integration example"
    return match.group(1)


@pytest.fixture(scope="module")
def example():
    namespace = {}
    torch.manual_seed(0)
    exec(compile(readme_example(), "README.md (integration example)", "exec"), namespace)
    return namespace


def test_the_readme_example_runs_and_trains(example):
    net, logits = example["net"], example["logits"]
    assert logits.shape == (2, 2)
    trained = [n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    for part in ("frontend.", "block.vpm.", "block.saavm.", "mix."):
        assert any(n.startswith(part) for n in trained), part


def test_each_module_runs_the_backend_it_was_given(example, monkeypatch):
    net = example["MyDetector"]().eval()
    asked = []
    real_get_op = backends.get_op

    def spy(op, argument, device, training=False):
        asked.append((op, argument))
        return real_get_op(op, argument, device, training)

    monkeypatch.setattr(backends, "get_op", spy)
    video, audio = torch.rand(2, 2, 3, 112, 112), torch.randn(2, 4000) * 0.1
    with torch.no_grad():
        reference = net(video, audio)
    assert asked == [
        ("large_kernel_attention", "torch"),
        ("conv_mlp", "torch"),
        ("joint_token_attention", "torch"),
        ("joint_token_attention", "auto"),
    ]
    if backends.unavailable_reason("cuda", "cpu") is None:  # one module on the C++ path, the rest unchanged
        net.block.saavm.backend = "cuda"
        asked.clear()
        with torch.no_grad():
            fused = net(video, audio)
        assert ("joint_token_attention", "cuda") in asked and ("conv_mlp", "torch") in asked
        assert relative_error(fused, reference) <= 1e-4


def test_blocks_raise_a_named_error_for_a_map_size_they_were_not_built_for(example):
    from avfused.errors import InputShapeError

    block = example["CAVLBlock"](12, 2, example["token_count"](2, 14, 14))
    with pytest.raises(InputShapeError, match="token_count|num_tokens"):
        block(torch.randn(1, 12, 2, 21, 21), torch.randn(1, 12, 50))


# ---- checkpoints and torch.hub ---------------------------------------------------------------------
@pytest.fixture
def saved_model(tmp_path):
    config = tiny_config()
    model = SingleStreamNet(config, backend="torch")
    with torch.no_grad():  # batch-norm statistics that differ from a fresh model's
        model(*random_batch(config, 4))
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, config, model.state_dict())
    return path, model.eval()


def test_from_checkpoint_restores_the_trained_model(saved_model):
    path, model = saved_model
    loaded = SingleStreamNet.from_checkpoint(path, backend="torch")
    assert not loaded.training and loaded.config == model.config
    video, audio = random_batch(model.config, 2)
    with torch.no_grad():
        assert torch.equal(loaded(video, audio).clip, model(video, audio).clip)


def test_torch_hub_loads_a_checkpoint_and_the_presets(saved_model):
    path, model = saved_model
    loaded = torch.hub.load(str(ROOT), "from_checkpoint", str(path), source="local", backend="torch")
    video, audio = random_batch(model.config, 2)
    with torch.no_grad():
        assert torch.equal(loaded(video, audio).clip, model(video, audio).clip)
    demo = torch.hub.load(str(ROOT), "demo", source="local", backend="torch", frames=2)
    assert demo.config == ModelConfig.demo(frames=2) and demo.backend == "torch"
    for name in ("small", "large"):
        assert torch.hub.load(str(ROOT), name, source="local").config == ModelConfig.preset(name)
