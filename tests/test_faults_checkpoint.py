"""Checkpoint fault injection: every single-bit flip of a small checkpoint's header, a sample of its body's,
and every truncation give CheckpointError -- never a KeyError or another exception -- and the commands
turn it into one 'error:' line."""

import random
import struct

import pytest
import torch
from helpers import tiny_config

from avfused.checkpoint import checkpoint_from_bytes, load_checkpoint, save_checkpoint
from avfused.cli import main
from avfused.errors import CheckpointError

BODY_SAMPLES = 3000


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> bytes:
    """A checkpoint of every kind of entry (weights, optimizer state, RNG bytes, JSON state), kept small so
    that flipping each header bit takes seconds."""
    weight = torch.nn.Parameter(torch.randn(2, 3))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    weight.sum().backward()
    optimizer.step()
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    model_state = {"w": weight.detach(), "b": torch.zeros(3)}
    state = {"step": 1, "history": [{"loss": 0.5}]}
    save_checkpoint(path, tiny_config(), model_state, optimizer.state_dict(), state, {"rng": torch.arange(8).byte()})
    return path.read_bytes()


def _flipped(blob: bytes, position: int, bit: int) -> bytes:
    out = bytearray(blob)
    out[position] ^= 1 << bit
    return bytes(out)


def _outcome(blob: bytes) -> str:
    try:
        checkpoint_from_bytes(blob, "ckpt.safetensors")
    except CheckpointError:
        return "CheckpointError"
    except Exception as exc:  # what this test is about: anything but CheckpointError is a failure
        return f"{type(exc).__name__}: {exc}"
    return "loaded"


def test_the_unaltered_checkpoint_loads(small_checkpoint):
    assert _outcome(small_checkpoint) == "loaded"


def test_every_bit_flip_in_the_header_is_a_checkpoint_error(small_checkpoint):
    (header_len,) = struct.unpack("<Q", small_checkpoint[:8])
    wrong = {}
    for position in range(8 + header_len):  # the length field and the JSON header, every bit
        for bit in range(8):
            outcome = _outcome(_flipped(small_checkpoint, position, bit))
            if outcome != "CheckpointError":
                wrong[(position, bit)] = outcome
    assert not wrong, f"{len(wrong)} header flips: {list(wrong.items())[:5]}"


def test_sampled_bit_flips_in_the_body_are_checkpoint_errors(small_checkpoint):
    (header_len,) = struct.unpack("<Q", small_checkpoint[:8])
    rng = random.Random(0)
    body = range(8 + header_len, len(small_checkpoint))
    positions = rng.sample(body, min(BODY_SAMPLES, len(body)))
    wrong = {
        p: o for p in positions if (o := _outcome(_flipped(small_checkpoint, p, rng.randrange(8)))) != "CheckpointError"
    }
    assert not wrong, f"{len(wrong)} body flips: {list(wrong.items())[:5]}"


def test_every_truncation_is_a_checkpoint_error(small_checkpoint):
    wrong = {n: o for n in range(len(small_checkpoint)) if (o := _outcome(small_checkpoint[:n])) != "CheckpointError"}
    assert not wrong, f"{len(wrong)} truncations: {list(wrong.items())[:5]}"


def test_a_text_file_named_safetensors_is_not_called_truncated(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are my notes, not a checkpoint\n" * 20)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "truncated" not in message and "not a safetensors file" in message and "notes.safetensors" in message


@pytest.mark.parametrize("command", ["detect", "eval", "train"])
def test_a_damaged_header_is_one_error_line_in_every_command(small_checkpoint, tmp_path, capsys, command):
    """The flip the issue found: a key of the header renamed ("data_offsets" -> "data_offsetr")."""
    blob = small_checkpoint.replace(b'"data_offsets"', b'"data_offsetr"', 1)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(blob)
    args = {
        "detect": ["detect", str(bad), "video.mp4"],
        "eval": ["eval", str(bad)],
        "train": ["train", "--out", str(tmp_path / "run"), "--resume", str(bad), "--data", str(tmp_path / "none")],
    }[command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.safetensors" in err[0]
