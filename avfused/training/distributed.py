"""Many processes with torch.distributed: set-up from torchrun's environment, the data shard of each rank,
and batch-norm statistics over the global batch.

    Context.from_environment()       rank / world size / device from RANK, WORLD_SIZE, LOCAL_RANK; NCCL on
                                     GPUs, gloo on the CPU; a single process when WORLD_SIZE is unset
    EpochSampler(n, batch, ...)      the rank's part of each global batch of one epoch's permutation,
                                     from a given batch on (exact resume)
    convert_batchnorm(model, ctx)    BatchNorm -> synchronised batch norm, so each rank normalises with
                                     the statistics of the global batch: torch's SyncBatchNorm on GPUs;
                                     on the CPU (which SyncBatchNorm does not support) GlobalBatchNorm,
                                     built on differentiable all_reduce, with the same forward, backward
                                     and running statistics as one process seeing the whole batch
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from avfused.errors import ConfigError


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    stats_group: object = None  # a separate gloo/NCCL group for batch-norm statistics

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str | None = None) -> Context:
        """Join the process group torchrun describes (or run alone) on ``device``: 'cpu', 'cuda' or None (auto)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device in (None, "auto"):
            use_cuda = torch.cuda.is_available()
        else:
            from avfused.evaluate import resolve_device  # a named error for a missing GPU or a wrong name

            use_cuda = resolve_device(device).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
        if world <= 1:
            return cls(device=dev)
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        return cls(rank, world, local, dev, backend, dist.new_group(backend=backend))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over ranks (itself when single-process)."""
        if not self.distributed:
            return values
        values = values.detach().clone().to(self.device)
        dist.all_reduce(values)
        return values / self.world_size

    def any_true(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (itself when single-process)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one rank: a permutation from (seed, epoch) cut into global batches of
    ``global_batch`` (the last incomplete one dropped); rank r takes positions [r*b, (r+1)*b) of each,
    b = global_batch / world_size. Starts at global batch ``start_batch``."""

    def __init__(
        self,
        size: int,
        global_batch: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        shuffle: bool = True,
    ) -> None:
        if global_batch % world_size:
            raise ConfigError(f"batch size {global_batch} must divide by the number of processes {world_size}")
        self.size, self.global_batch, self.seed, self.epoch = size, global_batch, seed, epoch
        self.rank, self.world_size, self.start_batch, self.shuffle = rank, world_size, start_batch, shuffle

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.global_batch

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0) * (self.global_batch // self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        local = self.global_batch // self.world_size
        for batch in range(self.start_batch, self.batches_per_epoch):
            first = batch * self.global_batch + self.rank * local
            yield from order[first : first + local]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks (each rank's loss uses every input)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: object) -> torch.Tensor:
        ctx.group = group
        tensor = tensor.clone()
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: torch.Tensor, group: object = None) -> torch.Tensor:
    """Differentiable sum of ``tensor`` over the ranks of ``group`` (the default group when None)."""
    return _AllReduceSum.apply(tensor, group or dist.group.WORLD)


class GlobalBatchNorm(nn.Module):
    """Batch norm over the batches of all ranks (any input (B, C, ...)), for CPU process groups.

    Sums and counts, then sums of squared deviations, go through a differentiable all_reduce, so autograd
    yields the gradient of the global batch; running statistics follow nn.BatchNorm (unbiased variance).
    """

    def __init__(self, source: nn.modules.batchnorm._BatchNorm, group: object = None) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = source.num_features, source.eps, source.momentum
        self.affine, self.track_running_stats, self.group = source.affine, source.track_running_stats, group
        self.weight, self.bias = source.weight, source.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(source, name))
        self.training = source.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias,
                self.training or self.running_mean is None, self.momentum or 0.0, self.eps,
            )  # fmt: skip
        dims = [0, *range(2, x.dim())]
        c = self.num_features
        shape = (1, c) + (1,) * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = torch.full((1,), x.numel() / c, dtype=xf.dtype, device=x.device)
        # two passes (mean, then squared deviations): no cancellation as in E[x^2] - E[x]^2
        first = all_reduce_sum(torch.cat([xf.sum(dims), count]), self.group)
        total = first[c]
        mean = first[:c] / total
        centred = xf - mean.reshape(shape)
        var = all_reduce_sum((centred * centred).sum(dims), self.group) / total
        y = centred * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (total / (total - 1).clamp_min(1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, context: Context) -> nn.Module:
    """Every BatchNorm of ``module`` normalised over the global batch (see the module docstring)."""
    if not context.distributed:
        return module
    if context.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, context.stats_group)
    return _replace_batchnorm(module, context.stats_group)


def _replace_batchnorm(module: nn.Module, group: object) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return GlobalBatchNorm(module, group)
    for name, child in module.named_children():
        replaced = _replace_batchnorm(child, group)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
