"""Two gloo processes (DDP, global batch norm) against one process on the same global batch: the same
losses and the same weights after a few steps, within float tolerance.

Both runs use float64: in float32, AdamW divides gradients that are zero in exact arithmetic (biases
before a normalisation) by their own rounding noise, which turns 1e-9 differences into 1e-4 steps."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers import tiny_config

from avfused.training.distributed import Context
from avfused.training.loop import TrainConfig, Trainer
from avfused.training.toy import ToyClips


def equivalence_config():
    # Mismatch partners and the statistics swap pair clips inside each rank's batch (a different, equally
    # valid random pairing than one process would draw), so they are off for this comparison.
    return tiny_config(feature_swap=False, mismatch_pairing=False)


def train_config():
    return TrainConfig(epochs=2, batch_size=4, progress=False, seed=11, warmup=0.3, dtype="float64")


def run_training(out_dir, context):
    config = equivalence_config()
    trainer = Trainer(
        config, train_config(), ToyClips(config, 12, seed=0), ToyClips(config, 4, seed=1), out_dir, "torch", context
    )
    trainer.fit()
    return trainer


def worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
         "MASTER_PORT": str(port)}
    )  # fmt: skip
    context = Context.from_environment("cpu")
    try:
        trainer = run_training(out_dir, context)
        state = {k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()}
        torch.save({"state": state, "losses": [r["loss"] for r in trainer.history]}, f"{out_dir}/rank{rank}.pt")
    finally:
        context.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    mp.start_processes(worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    single = run_training(tmp_path / "single", Context())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    expected = single.model.state_dict()
    for rank in ranks:
        assert rank["losses"] == pytest.approx([r["loss"] for r in single.history], rel=1e-10)
        assert rank["state"].keys() == expected.keys()
        for key, value in expected.items():
            assert value.dtype in (torch.float64, torch.int64), key
            torch.testing.assert_close(rank["state"][key], value, rtol=1e-9, atol=1e-11, msg=key)
    # the ranks agree with each other to the bit on the weights DDP keeps in sync
    for key, value in ranks[0]["state"].items():
        if key.endswith(("weight", "bias")):
            assert torch.equal(value, ranks[1]["state"][key]), key
    assert (tmp_path / "best.safetensors").is_file()  # rank 0 wrote the checkpoints
