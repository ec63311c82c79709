"""Checkpoints: exact round trip of weights, optimizer and state; tampered, truncated or foreign files
raise CheckpointError; writes are atomic."""

import json
import struct

import pytest
import torch
from helpers import random_batch, tiny_config

from avfused import SingleStreamNet
from avfused.checkpoint import load_checkpoint, load_model, save_checkpoint
from avfused.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_model_and_optimizer():
    config = tiny_config()
    model = SingleStreamNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    video, audio = random_batch(config, 3)
    out = model(video, audio)
    (out.clip.sum() + out.visual.sum() + out.audio.sum()).backward()
    optimizer.step()
    return config, model, optimizer


@pytest.fixture
def saved(tmp_path):
    config, model, optimizer = trained_model_and_optimizer()
    path = tmp_path / "ckpt.safetensors"
    state = {"step": 7, "history": [{"loss": 0.5}], "nested": {"a": [1, 2]}}
    rng = torch.get_rng_state()
    save_checkpoint(path, config, model.state_dict(), optimizer.state_dict(), state, {"rng": rng})
    return path, config, model, optimizer, state, rng


def test_round_trip_is_exact(saved):
    path, config, model, optimizer, state, rng = saved
    checkpoint = load_checkpoint(path)
    assert checkpoint.config == config
    assert checkpoint.state == state
    for key, value in model.state_dict().items():
        assert torch.equal(checkpoint.model_state[key], value), key
    assert torch.equal(checkpoint.extra["rng"], rng)
    # the optimizer state restores into a fresh optimizer and steps identically
    fresh = SingleStreamNet(config)
    fresh.load_state_dict(checkpoint.model_state)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_optimizer.load_state_dict(checkpoint.optimizer_state)
    assert fresh_optimizer.param_groups[0]["betas"] == (0.8, 0.95)
    video, audio = random_batch(config, 2)
    for m, opt in ((model, optimizer), (fresh, fresh_optimizer)):
        opt.zero_grad()
        torch.manual_seed(1)
        out = m(video, audio)
        (out.clip.sum() + out.visual.sum()).backward()
        opt.step()
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_load_model_gives_eval_model_with_weights(saved):
    path, config, model = saved[:3]
    loaded = load_model(path)
    assert not loaded.training
    video, audio = random_batch(config, 2)
    model.eval()
    torch.testing.assert_close(loaded(video, audio).clip, model(video, audio).clip, rtol=0, atol=0)


def test_flipped_byte_in_tensor_data_is_detected(saved):
    path = saved[0]
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_edited_config_is_detected(saved):
    path = saved[0]
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    config = json.loads(header["__metadata__"]["config"])
    config["drop_path"] = 0.5
    header["__metadata__"]["config"] = json.dumps(config)
    new_header = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new_header)) + new_header + blob[8 + n :])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0, 5, 100, -1000])
def test_truncated_file_is_detected(saved, keep):
    path = saved[0]
    blob = path.read_bytes()
    path.write_bytes(blob[:keep])
    with pytest.raises(CheckpointError, match="truncated|too short|not valid JSON"):
        load_checkpoint(path)


def test_foreign_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"PK\x03\x04 this is a zip, not a checkpoint" * 4)
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(other)


def test_atomic_write_leaves_no_temporary_and_keeps_old_file_on_failure(saved, monkeypatch):
    path, config, model = saved[:3]
    before = path.read_bytes()
    import avfused.checkpoint as ck

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, config, model.state_dict(), None, {"step": 8})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    monkeypatch.undo()
    load_checkpoint(path)  # still the complete old checkpoint
