"""Training under faults: a run folder is never overwritten unasked, Ctrl-C and SIGKILL at several points
leave only complete files and a resume point from which the run ends with the uninterrupted run's weights,
a full disk is one named error with the logs behind the checkpoints, a bad --model-config is one line."""

import errno
import json
import multiprocessing
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

import avfused.checkpoint as checkpoint_module
import avfused.commands.train as train_command
from avfused.checkpoint import load_checkpoint
from avfused.cli import main
from avfused.errors import OutputExistsError, OutputWriteError
from avfused.training.loop import BEST, LAST, RUN_FILES, TrainConfig, Trainer
from avfused.training.toy import ToyClips

pytestmark = pytest.mark.usefixtures("one_thread")

# 2 epochs of 2 steps (8 clips, batch 4), validation on 4 clips: every phase of a run, in about a second
EPOCHS, STEPS_PER_EPOCH = 2, 2


def make_trainer(out, overwrite=False, max_steps=0, workers=0) -> Trainer:
    config = tiny_config()
    train_config = TrainConfig(epochs=EPOCHS, batch_size=4, progress=False, seed=5, max_steps=max_steps,
                               workers=workers)  # fmt: skip
    return Trainer(
        config,
        train_config,
        ToyClips(config, 8, seed=0),
        ToyClips(config, 4, seed=1),
        out,
        "torch",
        overwrite=overwrite,
    )


def outcome(out: Path) -> dict:
    """What a finished run left: its checkpoints' tensors and the losses and scores it logged."""
    last, best = load_checkpoint(out / LAST), load_checkpoint(out / BEST)
    history = json.loads((out / "metrics.json").read_text())["history"]
    logged = [{k: v for k, v in row.items() if k not in ("seconds", "clips_per_s")} for row in history]
    return {"last": last.model_state, "optimizer": last.optimizer_state["state"], "best": best.model_state,
            "best_step": best.state["step"], "logged": logged}  # fmt: skip


def assert_same_outcome(a: dict, b: dict) -> None:
    for part in ("last", "best"):
        assert a[part].keys() == b[part].keys()
        differ = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not differ, f"{part}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    for param, entries in a["optimizer"].items():
        for key, value in entries.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"][param][key])), (param, key)
    assert a["best_step"] == b["best_step"] and a["logged"] == b["logged"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("whole")
    make_trainer(out).fit()
    torch.set_num_threads(threads)
    return outcome(out)


# ---- case 1: a folder that holds a run ------------------------------------------------------------------
def test_training_into_a_folder_that_holds_a_run_is_refused(tmp_path):
    make_trainer(tmp_path, max_steps=1).fit()
    before = {name: (tmp_path / name).read_bytes() for name in RUN_FILES}
    with pytest.raises(OutputExistsError, match="--resume continues it, --overwrite replaces it"):
        make_trainer(tmp_path).fit()
    assert {name: (tmp_path / name).read_bytes() for name in RUN_FILES} == before  # nothing was touched
    make_trainer(tmp_path, overwrite=True).fit()  # asked for: replaced
    assert load_checkpoint(tmp_path / LAST).state["step"] == EPOCHS * STEPS_PER_EPOCH


def test_the_train_command_refuses_before_reading_any_data(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / BEST).write_bytes(b"an earlier run's best")
    args = ["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "no-data"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and "no-data" not in err
    assert main([*args, "--resume"]) == 2  # nothing to resume from, and a best.safetensors to keep
    err = capsys.readouterr().err
    assert "no last.safetensors to resume from" in err and "--overwrite" in err and "no-data" not in err
    assert (tmp_path / "run" / BEST).read_bytes() == b"an earlier run's best"


# ---- kill points ----------------------------------------------------------------------------------------
@contextmanager
def signal_at(trainer: Trainer, point: str, signum: int, count: int = 1):
    """Send ``signum`` to this process at the ``count``-th time the run reaches ``point``:
    forward   after a training forward pass (batch-norm statistics updated, weights not yet)
    update    after an optimizer step (weights moved, the step counter not yet)
    load      while the data loader reads a clip
    validate  inside a validation forward pass
    write:F   inside the write of file F, its temporary complete, before it replaces F
    written:F right after F was replaced"""
    seen = {"n": 0}

    def reached():
        seen["n"] += 1
        if seen["n"] == count:
            os.kill(os.getpid(), signum)

    model = trainer.model
    undo = []
    if point in ("forward", "validate"):
        training = point == "forward"
        handle = model.register_forward_hook(lambda m, i, o: reached() if m.training == training else None)
        undo.append(handle.remove)
    elif point == "update":
        undo.append(trainer.optimizer.register_step_post_hook(lambda *a: reached()).remove)
    elif point == "load":
        base = trainer.train_set.base

        class Reading(torch.utils.data.Dataset):
            def __len__(self):
                return len(base)

            def __getitem__(self, index):
                reached()
                return base[index]

        trainer.train_set.base = Reading()
    else:
        when, name = point.split(":")
        replace = os.replace

        def replacing(src, dst):
            if Path(dst).name == name and when == "write":
                reached()
            replace(src, dst)
            if Path(dst).name == name and when == "written":
                reached()

        checkpoint_module.os.replace = replacing
        undo.append(lambda: setattr(checkpoint_module.os, "replace", replace))
    try:
        yield
    finally:
        for step in undo:
            step()


def assert_only_complete_files(out: Path, killed: bool) -> None:
    """Each file is a complete version: checkpoints verify, the logs parse, and no log names an epoch the
    checkpoints lack. A SIGKILL may leave a hidden temporary (a resume deletes it), nothing else."""
    for path in out.iterdir():
        if path.name in (LAST, BEST):
            load_checkpoint(path)
        elif path.name == "metrics.json":
            logged = len(json.loads(path.read_text())["history"])
            assert (out / LAST).exists() and logged <= load_checkpoint(out / LAST).state["epoch"]
        elif path.name == "metrics.csv":
            lines = path.read_text().splitlines()
            assert len({line.count(",") for line in lines}) == 1
        else:  # a temporary of atomic_write_bytes: .<name>.tmp-<pid>
            assert killed and path.name.startswith(".") and path.name[1:].split(".tmp-")[0] in RUN_FILES, path.name


def resume(out: Path) -> dict:
    """`avfused train --resume`: continue from last.safetensors; with none written yet, start again (adding
    --overwrite when a run killed at its first epoch's end left a best.safetensors)."""
    has_last = (out / LAST).exists()
    make_trainer(out, overwrite=not has_last).fit(resume=out / LAST if has_last else None)
    assert not [p.name for p in out.iterdir() if p.name not in RUN_FILES]  # no temporaries are left
    return outcome(out)


# ---- case 2 and the property: Ctrl-C ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "point, count",
    [
        ("forward", 3),  # inside step 3: the batch-norm statistics of a half-done step
        # (inside an optimizer update: the next test; while loading a batch: tests/test_train.py)
        ("validate", 1),  # inside the first epoch's validation
        (f"write:{LAST}", 1),  # among the end-of-epoch saves: the stale best.safetensors
    ],
)
def test_ctrl_c_stops_at_a_whole_step_and_resume_ends_as_the_uninterrupted_run(tmp_path, uninterrupted, point, count):
    trainer = make_trainer(tmp_path)
    with signal_at(trainer, point, signal.SIGINT, count), pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert_only_complete_files(tmp_path, killed=False)
    last = load_checkpoint(tmp_path / LAST)
    assert last.state["step"] == trainer.step  # the step it stopped at is the one saved
    if (tmp_path / "metrics.json").exists():  # an epoch ended: every file names the same best epoch
        best = json.loads((tmp_path / "metrics.json").read_text())["best"]
        assert load_checkpoint(tmp_path / BEST).state["step"] == best["step"] == last.state["best"]["step"]
    assert_same_outcome(resume(tmp_path), uninterrupted)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, uninterrupted):
    trainer = make_trainer(tmp_path)
    with signal_at(trainer, "forward", signal.SIGINT, 3), signal_at(trainer, "update", signal.SIGINT, 3):
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()  # the second Ctrl-C comes inside step 3: nothing of it is saved
    assert load_checkpoint(tmp_path / LAST).state["step"] == STEPS_PER_EPOCH
    assert_same_outcome(resume(tmp_path), uninterrupted)


def test_ctrl_c_that_reaches_the_loader_workers_too_still_stops_at_a_whole_step(tmp_path, uninterrupted):
    """A terminal's Ctrl-C goes to the data-loader workers as well: they go on serving the step's batches."""
    trainer = make_trainer(tmp_path, workers=1)

    def everyone(module, inputs, output):
        if module.training and trainer.step == STEPS_PER_EPOCH:  # inside step 3
            workers = multiprocessing.active_children()
            assert workers, "no data-loader worker to send Ctrl-C to"
            for worker in workers:
                os.kill(worker.pid, signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    handle = trainer.model.register_forward_hook(everyone)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    handle.remove()
    assert load_checkpoint(tmp_path / LAST).state["step"] == STEPS_PER_EPOCH + 1
    assert_same_outcome(resume(tmp_path), uninterrupted)


def test_ctrl_c_in_a_command_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "_synthesise", interrupted)
    try:
        status = main(["train", "--out", str(tmp_path), "--no-progress"])
    except KeyboardInterrupt:  # raised on, it would end this test session too
        pytest.fail("the command let KeyboardInterrupt out (a traceback)")
    assert status == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted" and "Traceback" not in err


# ---- the property: SIGKILL, in forked processes -------------------------------------------------------------
def _train_until_killed(out: str, point: str, count: int) -> None:
    trainer = make_trainer(Path(out))
    with signal_at(trainer, point, signal.SIGKILL, count):
        trainer.fit()
    os._exit(0)  # not killed: the parent sees exit status 0 and fails the test


@pytest.mark.parametrize(
    "point, count",
    [
        ("forward", 1),  # before any checkpoint: the resume starts again
        (f"write:{LAST}", 1),  # best written, last's temporary complete but not in place
        ("written:metrics.csv", 1),  # the checkpoints written, metrics.json not yet
        ("forward", 4),  # inside the last step
    ],
)
def test_sigkill_leaves_complete_files_and_resume_ends_as_the_uninterrupted_run(tmp_path, uninterrupted, point, count):
    process = multiprocessing.get_context("fork").Process(
        target=_train_until_killed, args=(str(tmp_path), point, count)
    )
    process.start()
    process.join(timeout=120)
    assert process.exitcode == -signal.SIGKILL
    assert_only_complete_files(tmp_path, killed=True)
    assert_same_outcome(resume(tmp_path), uninterrupted)


# ---- case 7: a full disk, a bad --model-config ------------------------------------------------------------
def test_a_full_disk_is_a_named_error_and_no_log_runs_ahead_of_the_checkpoints(tmp_path, monkeypatch):
    replace, writes = os.replace, {"n": 0}

    def disk_full_at_the_second_last(src, dst):
        if Path(dst).name == LAST:
            writes["n"] += 1
            if writes["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", disk_full_at_the_second_last)
    with pytest.raises(OutputWriteError, match="No space left on device.*--resume"):
        make_trainer(tmp_path).fit()
    assert load_checkpoint(tmp_path / LAST).state["epoch"] == 1  # the old checkpoint survived
    assert len(json.loads((tmp_path / "metrics.json").read_text())["history"]) == 1  # not the unsaved epoch 2
    assert not [p for p in tmp_path.iterdir() if p.name not in RUN_FILES]


@pytest.mark.parametrize(
    "text, words",
    [(None, "cannot read"), ('{"image_size": 96,', "not valid JSON"), ('{"imag_size": 96}', "unknown field"),
     ("[96]", "JSON object")],
)  # fmt: skip
def test_a_bad_model_config_is_one_error_line(tmp_path, capsys, text, words):
    path = tmp_path / "model.json"
    if text is not None:
        path.write_text(text)
    assert main(["train", "--out", str(tmp_path / "run"), "--model-config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --model-config") and words in err[0]
