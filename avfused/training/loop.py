"""The training loop: AdamW, warm-up then linear decay, the detection loss, per-epoch validation,
best and last checkpoints, exact resume, one or many processes (torchrun + DDP).

    Trainer(model_config, train_config, train_set, val_set, out_dir).fit(resume=None) -> summary dict

Datasets yield clip dicts (avfused.data.datasets.ClipDataset's layout). ``train_set`` is wrapped in
AugmentedDataset (augmentation seeded per clip). Files written to ``out_dir``:
    last.safetensors  after every epoch (and every ``save_every`` steps, and on Ctrl-C)
    best.safetensors  the epoch with the best validation clip AUC, then ACC (the lowest training loss
                      without a val set)
    Each checkpoint carries the decision thresholds chosen on its epoch's validation videos
    (avfused.calibration: max smoothed balanced accuracy per head), which `avfused detect` uses.
    metrics.csv / metrics.json   one row per epoch: losses, learning rate, throughput, val metrics
A folder that already holds a run is refused unless the run resumes from its own checkpoint or
``overwrite`` is set (which deletes the old run's files first).

Exact resume: a checkpoint stores the weights, the optimizer's and scheduler's state, the RNG states
and the data position (epoch, global batches done); the data order is a permutation drawn from
(seed, epoch) and each clip's augmentation from (seed, epoch, index), so the resumed run draws the
same batches and the same random numbers as the uninterrupted one.

Interruptions: every file is written atomically (the old complete version or the new one), at an epoch's
end in the order best, last, logs, so no file names an epoch the checkpoints do not hold; a resume
rewrites the logs from the checkpoint and deletes the temporaries of a killed run. Ctrl-C finishes the
step (and an epoch's end) before saving 'last' (avfused.training.interrupt), so a checkpoint never holds
half a step (e.g. the batch-norm statistics of a forward pass without its update); a second Ctrl-C stops
at once and keeps the last saved checkpoint. A killed run (SIGKILL, power loss) resumes from the last
checkpoint written and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from avfused.calibration import calibrate
from avfused.checkpoint import atomic_write_bytes, load_checkpoint, remove_stale_temporaries, save_checkpoint
from avfused.config import ModelConfig
from avfused.data.datasets import collate_clips
from avfused.errors import CheckpointError, ConfigError, OutputExistsError, OutputWriteError
from avfused.evaluate import HEADS, autocast, predict, report, video_level
from avfused.metrics import json_safe
from avfused.model import SingleStreamNet
from avfused.training.augment import AugmentConfig, AugmentedDataset
from avfused.training.distributed import Context, EpochSampler, convert_batchnorm, unwrap
from avfused.training.interrupt import deferred_interrupts
from avfused.training.losses import PARTS, LossWeights, detection_loss
from avfused.training.schedule import make_scheduler

log = logging.getLogger("avfused")

LAST, BEST = "last.safetensors", "best.safetensors"
RUN_FILES = (LAST, BEST, "metrics.csv", "metrics.json")  # what a run writes into its folder


@dataclass
class TrainConfig:
    """The recipe (docs/design.md, section 1) and the run's bookkeeping."""

    epochs: int = 10
    batch_size: int = 16  # global: split evenly over the processes
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of all steps spent warming up
    final_lr: float = 0.0  # the learning rate decays linearly to final_lr * lr
    label_smoothing: float = 0.1
    # Mismatched pairs share their pooled features with real pairs, so a linear clip head cannot tell them
    # apart; at weight 1 the extra "fake" labels held the demo's clip AUC at 0.5 (README), 0.25 does not.
    mismatch_weight: float = 0.25
    probe_weight: float = 1.0
    grad_clip: float = 0.0  # 0 = off
    seed: int = 0
    max_steps: int = 0  # 0 = epochs * batches per epoch
    amp: str = "auto"  # "auto" (bf16 on GPUs), "bf16", "off"
    dtype: str = "float32"  # of the weights; "float64" for numerical checks (e.g. the multi-process test)
    workers: int = 0
    eval_batch_size: int = 32
    save_every: int = 0  # steps between 'last' checkpoints inside an epoch; 0 = only at epoch ends
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        augment = data.pop("augment", {})
        augment = {k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()}
        return cls(**data, augment=AugmentConfig(**augment))


def claim_run_folder(out_dir: str | Path, resume: str | Path | None = None, overwrite: bool = False) -> None:
    """Refuse to write over another run's files in ``out_dir`` unless ``resume`` is a checkpoint in it or
    ``overwrite`` (which deletes them); delete the temporaries a killed run left there."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        remove_stale_temporaries(out_dir)
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    own = resume is not None and Path(resume).resolve().parent == out_dir.resolve()
    if not existing or own:
        return
    if not overwrite:
        raise OutputExistsError(
            out_dir,
            f"already holds a run ({', '.join(existing)}); --resume continues it, --overwrite replaces it "
            "(Trainer(overwrite=True)), or choose another --out",
        )
    log.warning("overwriting the run in %s: deleting %s", out_dir, ", ".join(existing))
    for name in existing:
        (out_dir / name).unlink()


def _decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only, not on biases, norms, scales and embeddings."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_matrix = parameter.dim() >= 2 and not name.endswith((".pos", "pos_embedding", "position"))
        (decay if is_matrix else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"rng_torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng_cuda"] = torch.cuda.get_rng_state()
    return state, tensors


def _set_rng_state(state: dict, tensors: dict[str, torch.Tensor]) -> None:
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "rng_torch" in tensors:
        torch.set_rng_state(tensors["rng_torch"])
    if "rng_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng_cuda"])


class Trainer:
    """One training run (see the module docstring)."""

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        train_set: Dataset,
        val_set: Dataset | None,
        out_dir: str | Path,
        backend: str = "auto",
        context: Context | None = None,
        data_info: dict | None = None,
        overwrite: bool = False,
    ) -> None:
        self.model_config, self.config = model_config, train_config
        self.out_dir = Path(out_dir)
        self.context = context or Context()
        self.data_info = data_info or {}
        self.overwrite = overwrite
        c, ctx = train_config, self.context
        if c.batch_size % ctx.world_size:
            raise ConfigError(f"--batch-size {c.batch_size} must divide by the number of processes {ctx.world_size}")
        if len(train_set) < c.batch_size:
            raise ConfigError(f"the training set has {len(train_set)} clips, fewer than one batch of {c.batch_size}")
        self.train_set = AugmentedDataset(train_set, c.augment, c.seed)
        self.val_set = val_set
        self.batches_per_epoch = len(train_set) // c.batch_size
        self.total_steps = c.epochs * self.batches_per_epoch
        if c.max_steps:
            self.total_steps = min(self.total_steps, c.max_steps) if c.epochs else c.max_steps
        if self.total_steps < 1:
            raise ConfigError(f"nothing to train: {c.epochs} epochs of {self.batches_per_epoch} batches")
        self.epochs = math.ceil(self.total_steps / self.batches_per_epoch)
        if c.amp not in ("auto", "bf16", "off"):
            raise ConfigError(f"amp must be 'auto', 'bf16' or 'off', got {c.amp!r}")
        self.amp = c.amp == "bf16" or (c.amp == "auto" and ctx.device.type == "cuda")

        # identical seeds on every rank: same initial weights and the same training-only random choices
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        np.random.seed(c.seed % 2**32)
        if c.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be 'float32' or 'float64', got {c.dtype!r}")
        self.dtype = getattr(torch, c.dtype)
        model = SingleStreamNet(model_config, backend=backend).to(ctx.device, self.dtype)
        model = convert_batchnorm(model, ctx)
        if ctx.distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.model = model
        self.optimizer = torch.optim.AdamW(_decay_groups(unwrap(model), c.weight_decay), lr=c.lr)
        warmup_steps = int(round(c.warmup * self.total_steps))
        self.scheduler = make_scheduler(self.optimizer, warmup_steps, self.total_steps, c.final_lr)
        self.loss_weights = LossWeights(c.label_smoothing, c.mismatch_weight, c.probe_weight)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.epoch_sums: dict[str, float] = {}
        self.history: list[dict] = []
        self.best: dict = {}
        self._busy = False  # True inside a step or an epoch's end: the state there is not a resume point
        self.calibration: dict | None = None  # thresholds from the latest validation (avfused.calibration)

    # ---- state -------------------------------------------------------------------------------
    def _state(self, rng: dict) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps,
            "epoch_sums": self.epoch_sums,
            "history": self.history,
            "best": self.best,
            "scheduler": self.scheduler.state_dict(),  # lr_lambdas: None per group (plain functions)
            "rng": rng,
            "world_size": self.context.world_size,
            "train_config": self.config.to_dict(),
            "data": self.data_info,
        }

    def save(self, name: str, rng: tuple[dict, dict] | None = None) -> None:
        """Write checkpoint ``name`` (rank 0 only; every rank holds the same weights); ``rng``: the RNG
        state to store instead of the current one."""
        if not self.context.is_main:
            return
        rng_state, rng_tensors = rng or _rng_state()
        try:
            save_checkpoint(
                self.out_dir / name,
                self.model_config,
                unwrap(self.model).state_dict(),
                self.optimizer.state_dict(),
                json_safe(self._state(rng_state)),
                rng_tensors,
                self.calibration,
            )
        except OutputWriteError as exc:
            raise OutputWriteError(
                exc.path, f"{exc.reason}; training stopped at step {self.step}: make room, then continue with "
                f"--resume (from {self.out_dir / LAST} as last written)"
            ) from exc

    def load(self, path: str | Path) -> None:
        """Continue from a checkpoint written by ``save`` (same model config and recipe)."""
        checkpoint = load_checkpoint(path)
        if checkpoint.config != self.model_config:
            raise CheckpointError(f"{path}: written for another model config ({checkpoint.config}); cannot resume")
        state = checkpoint.state
        if "step" not in state or checkpoint.optimizer_state is None:
            raise CheckpointError(f"{path}: holds weights only (no training state); cannot resume from it")
        if state.get("total_steps") != self.total_steps:
            raise CheckpointError(
                f"{path}: its run has {state.get('total_steps')} steps, this one {self.total_steps}; "
                "resume with the same --epochs / --max-steps / --batch-size and data"
            )
        unwrap(self.model).load_state_dict(checkpoint.model_state)
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.epoch_sums, self.history, self.best = state["epoch_sums"], state["history"], state["best"]
        _set_rng_state(state.get("rng", {}), checkpoint.extra)
        self.calibration = checkpoint.calibration
        self._write_logs()  # a run killed between its checkpoint and its logs: the logs follow the checkpoint
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    # ---- training ------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        ctx, c = self.context, self.config
        sampler = EpochSampler(
            len(self.train_set), c.batch_size, c.seed, self.epoch, ctx.rank, ctx.world_size, self.batch_in_epoch
        )
        self.train_set.set_epoch(self.epoch)
        # a generator of its own, so creating the loader draws nothing from the global RNG
        generator = torch.Generator().manual_seed(c.seed + self.epoch)
        return DataLoader(
            self.train_set,
            batch_size=c.batch_size // ctx.world_size,
            sampler=sampler,
            num_workers=c.workers,
            collate_fn=collate_clips,
            generator=generator,
            drop_last=True,
        )

    def _train_step(self, batch: dict) -> dict[str, float]:
        device = self.context.device
        video = batch["video"].to(device, self.dtype, non_blocking=True)
        audio = batch["audio"].to(device, self.dtype, non_blocking=True)
        labels = batch["label"].to(device)
        visual_labels = batch.get("visual_label", batch["label"]).to(device)
        audio_labels = batch.get("audio_label", batch["label"]).to(device)
        with autocast(device, self.amp):
            output = self.model(video, audio)
        loss, parts = detection_loss(output, labels, visual_labels, audio_labels, self.loss_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        correct = (output.clip.detach().argmax(1) == labels).float().mean()
        values = torch.stack([loss.detach(), correct] + [parts.get(p, torch.zeros(())) for p in PARTS])
        values = self.context.all_mean(values.to(device, torch.float64)).cpu().tolist()
        return dict(zip(("loss", "clip_acc") + PARTS, values, strict=True))

    def _validate(self) -> dict:
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        predictions = predict(
            unwrap(self.model),
            self.val_set,
            self.config.eval_batch_size,
            self.context.device,
            self.amp,
            progress=self.config.progress,
        )
        result = report(predictions)["overall"]
        row = {f"val_{head}_{m}": result[head][m] for head in HEADS for m in ("acc", "auc", "eer", "ap")}
        # the thresholds of these weights: chosen on validation videos, never on the test split
        self.calibration = calibrate(video_level(predictions), epoch=self.epoch + 1, step=self.step)
        if self.calibration is not None:
            row.update({f"val_{h}_threshold": t for h, t in self.calibration["thresholds"].items()})
        return row

    def _end_epoch(self, seconds: float, clips: int) -> None:
        steps = max(self.epoch_sums.get("steps", 0), 1)
        row = {"epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update({k: v / steps for k, v in self.epoch_sums.items() if k != "steps"})
        row.update({"seconds": seconds, "clips_per_s": clips / max(seconds, 1e-9)})
        if self.context.is_main:
            row.update(self._validate())
        self.context.barrier()
        self.history.append(json_safe(row))
        auc, acc = row.get("val_clip_auc"), row.get("val_clip_acc")
        # validation clip AUC, then ACC; a later epoch wins a tie. Without a val set: the training loss.
        score = [auc, acc or 0.0] if auc is not None and math.isfinite(auc) else [-row["loss"]]
        is_best = not self.best or score >= self.best["score"]
        if is_best:
            self.best = {"score": score, "epoch": self.epoch + 1, "step": self.step}
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums = {}
        # best first: killed before 'last', the resumed run redoes this epoch and writes the same best
        if is_best:
            self.save(BEST)
        self.save(LAST)
        self._write_logs()  # last: no log names an epoch the checkpoints do not hold
        if self.context.is_main:
            shown = {k: row[k] for k in ("loss", "clip_acc", "val_clip_acc", "val_clip_auc") if row.get(k) is not None}
            log.info("epoch %d: %s", row["epoch"], "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))

    def _write_logs(self) -> None:
        if not self.context.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        columns = list(dict.fromkeys(k for row in self.history for k in row))
        lines = [",".join(columns)]
        for row in self.history:
            lines.append(",".join("" if row.get(k) is None else f"{row[k]}" for k in columns))
        atomic_write_bytes(self.out_dir / "metrics.csv", ("\n".join(lines) + "\n").encode())
        # the data (its split file's sha256 included), so every result names what it was computed on
        summary = {"history": self.history, "best": self.best, "total_steps": self.total_steps, "data": self.data_info}
        atomic_write_bytes(self.out_dir / "metrics.json", json.dumps(summary, indent=2).encode())

    def _claim_out_dir(self, resume: str | Path | None) -> None:
        if self.context.is_main:
            claim_run_folder(self.out_dir, resume, self.overwrite)

    def _stop_requested(self, interrupts) -> bool:
        """Whether any rank was asked to stop (every rank must stop at the same step)."""
        if not self.context.distributed:
            return interrupts.requested
        return self.context.any_true(interrupts.requested)

    def _stop_and_save(self) -> None:
        log.warning("interrupted at step %d; wrote %s to resume from (--resume)", self.step, self.out_dir / LAST)
        self.save(LAST)
        raise KeyboardInterrupt

    def fit(self, resume: str | Path | None = None, stop_after: int | None = None) -> dict:
        """Train to the end (or until step ``stop_after``, saving 'last' there: a planned interruption)."""
        self._claim_out_dir(resume)
        if resume is not None:
            self.load(resume)
        self.model.train()
        with deferred_interrupts() as interrupts:
            try:
                return self._fit(stop_after, interrupts)
            except KeyboardInterrupt:
                if self._busy:  # a second Ctrl-C (or one where no handler could be set) inside a step
                    log.warning("interrupted mid-step; %s keeps the last checkpoint written", self.out_dir / LAST)
                elif not interrupts.requested:  # between steps: a consistent state, saved
                    self._stop_and_save()
                raise
            except Exception:
                # a data-loader worker that Ctrl-C stopped ends the loader with an error; the state is whole
                if interrupts.requested and not self._busy:
                    self._stop_and_save()
                raise

    def _fit(self, stop_after: int | None, interrupts) -> dict:
        c, ctx = self.config, self.context
        while self.step < self.total_steps:
            start, clips = time.perf_counter(), 0
            remaining = min(self.batches_per_epoch - self.batch_in_epoch, self.total_steps - self.step)
            bar = tqdm(
                total=remaining,
                desc=f"epoch {self.epoch + 1}/{self.epochs}",
                unit="step",
                disable=not (c.progress and ctx.is_main),
                leave=False,
            )
            for batch in self._loader():
                self._busy = True
                values = self._train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                clips += c.batch_size
                for key, value in values.items():
                    self.epoch_sums[key] = self.epoch_sums.get(key, 0.0) + value
                self.epoch_sums["steps"] = self.epoch_sums.get("steps", 0) + 1
                self._busy = False
                rate = clips / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{values['loss']:.4f}", clips_s=f"{rate:.1f}")
                bar.update()
                done = self.step >= self.total_steps or self.batch_in_epoch >= self.batches_per_epoch
                if done:
                    break
                if self._stop_requested(interrupts):
                    bar.close()
                    self._stop_and_save()
                if stop_after is not None and self.step >= stop_after:
                    bar.close()
                    self.save(LAST)
                    return {"stopped_at": self.step}
                if c.save_every and self.step % c.save_every == 0:
                    self.save(LAST)
            bar.close()
            self._busy = True
            self._end_epoch(time.perf_counter() - start, clips)
            self._busy = False
            if self.step < self.total_steps and self._stop_requested(interrupts):
                self._stop_and_save()
            if stop_after is not None and self.step >= stop_after and self.step < self.total_steps:
                return {"stopped_at": self.step}
        return {"steps": self.step, "best": self.best, "history": self.history}
