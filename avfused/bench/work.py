"""Work figures per clip: FLOPs and the minimum bytes an implementation must move, from the shapes alone.

op_work(op, config, batch) -> Work for one call of a hot op as the model makes it at stage 0
model_work(config, batch, device) -> Work for the whole model (FLOPs counted by torch's FlopCounterMode)
block_work(config, stage, batch, flops) -> Work for one CAVL block at a stage (FLOPs counted the same way)

``matmul_flops`` are the convolutions and matrix products (2 FLOPs per multiply-add, the direct
formulation: an FFT or overlap-add front end does fewer, so its achieved rate reads as "effective");
``other_flops`` estimates the elementwise work. ``forward_bytes`` is what a perfectly fused forward
must read and write (inputs, weights, output; no intermediate), ``backward_bytes`` what the backward
adds (gradient of the output in, inputs read again, gradients out). Weights are shared by the batch,
so their bytes are divided by it. ``for_mode`` turns these into the figures of a benchmark mode; a
backward is counted as twice the forward's FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from avfused.config import ModelConfig
from avfused.reference import STEM_KERNEL, STEM_STRIDE

FLOAT_BYTES = 4
ADAMW_BYTES_PER_PARAMETER = 7 * FLOAT_BYTES  # read param, grad, two moments; write param, two moments


@dataclass(frozen=True)
class Work:
    """Per-clip work of one forward call, and what the backward and the optimiser add."""

    matmul_flops: float
    other_flops: float
    forward_bytes: float
    backward_bytes: float
    parameters_per_clip: float  # parameters / batch: what the optimiser step touches per clip

    @property
    def forward_flops(self) -> float:
        return self.matmul_flops + self.other_flops

    def for_mode(self, mode: str) -> tuple[float, float]:
        """(FLOPs, bytes) per clip for a benchmark mode (see avfused.bench.cases.MODES)."""
        if mode in ("inference", "forward"):
            return self.forward_flops, self.forward_bytes
        flops, moved = 3 * self.forward_flops, self.forward_bytes + self.backward_bytes
        if mode == "train_step":
            moved += ADAMW_BYTES_PER_PARAMETER * self.parameters_per_clip
        return flops, moved


def _stage0(config: ModelConfig) -> tuple[int, int, int]:
    """(channels, side, frames) of the video maps at stage 0."""
    return config.widths[0], config.video_sizes()[0], config.frames


def audio_frontend_stem_work(config: ModelConfig, batch: int) -> Work:
    samples, filters, taps = config.num_samples, config.sinc_filters, config.sinc_kernel_size
    channels, out_length = config.widths[0], math.ceil(samples / STEM_STRIDE)
    sinc = 2 * filters * taps * samples
    stem = 2 * channels * filters * STEM_KERNEL * out_length
    # pre-emphasis + norm ~6/sample; |.|, +eps, log, mean, subtract ~5 per band value; filter design per batch.
    other = 6 * samples + 5 * filters * samples + 12 * filters * taps / batch
    parameters = 2 * filters + channels * filters * STEM_KERNEL
    output = channels * out_length
    forward = FLOAT_BYTES * (samples + output + parameters / batch)
    backward = FLOAT_BYTES * (output + samples + parameters / batch)  # the waveform needs no gradient
    return Work(sinc + stem, other, forward, backward, parameters / batch)


def joint_token_attention_work(config: ModelConfig, batch: int) -> Work:
    tokens, dim = config.num_tokens(0), config.token_dim
    matmul = 2 * tokens * tokens * dim * 2 + 2 * tokens * dim * dim
    # position add, LayerNorm ~8, bias and residual per value; scale and softmax ~6 per score.
    other = 11 * tokens * dim + 6 * tokens * tokens
    parameters = tokens * dim + 2 * dim + dim * dim + dim
    activations = tokens * dim
    forward = FLOAT_BYTES * (2 * activations + parameters / batch)
    backward = FLOAT_BYTES * (3 * activations + parameters / batch)
    return Work(matmul, other, forward, backward, parameters / batch)


def large_kernel_attention_work(config: ModelConfig, batch: int) -> Work:
    channels, side, frames = _stage0(config)
    pixels = frames * side * side
    matmul = 2 * pixels * channels * (25 + 49 + channels)
    other = 4 * pixels * channels  # three biases and the gate
    parameters = channels * (25 + 49 + channels + 3)
    activations = pixels * channels
    forward = FLOAT_BYTES * (2 * activations + parameters / batch)
    backward = FLOAT_BYTES * (3 * activations + parameters / batch)
    return Work(matmul, other, forward, backward, parameters / batch)


def conv_mlp_work(config: ModelConfig, batch: int) -> Work:
    channels, side, frames = _stage0(config)
    hidden = channels * config.mlp_ratio
    pixels = frames * side * side
    matmul = 2 * pixels * (channels * hidden * 2 + 9 * hidden)
    other = pixels * (3 * hidden + channels)  # two biases and ReLU on the hidden values, one bias out
    parameters = 2 * channels * hidden + 9 * hidden + 2 * hidden + channels
    activations = pixels * channels
    forward = FLOAT_BYTES * (2 * activations + parameters / batch)
    backward = FLOAT_BYTES * (3 * activations + parameters / batch)
    return Work(matmul, other, forward, backward, parameters / batch)


_OP_WORK = {
    "audio_frontend_stem": audio_frontend_stem_work,
    "joint_token_attention": joint_token_attention_work,
    "large_kernel_attention": large_kernel_attention_work,
    "conv_mlp": conv_mlp_work,
}


def op_work(op: str, config: ModelConfig, batch: int) -> Work:
    return _OP_WORK[op](config, batch)


def _forward_flops(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    """Convolution and matmul FLOPs of one eval forward of ``module`` (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module.eval()(*inputs)
    return float(counter.get_total_flops())


def count_model_flops(config: ModelConfig, device: torch.device | str = "cpu") -> float:
    """Convolution and matmul FLOPs of one eval forward of the reference model on one clip."""
    from avfused.model import SingleStreamNet

    model = SingleStreamNet(config, backend="torch").to(device)
    video = torch.rand(1, config.frames, 3, config.image_size, config.image_size, device=device)
    audio = torch.randn(1, config.num_samples, device=device)
    return _forward_flops(model, video, audio)


def model_work(config: ModelConfig, batch: int, flops_per_clip: float) -> Work:
    """Model work from counted FLOPs; minimum bytes: the clip in, the weights (shared by the batch), logits out."""
    from avfused.model import SingleStreamNet

    parameters = sum(p.numel() for p in SingleStreamNet(config, backend="torch").parameters())
    clip = config.frames * 3 * config.image_size**2 + config.num_samples
    logits = 3 * config.num_classes
    forward = FLOAT_BYTES * (clip + logits + parameters / batch)
    backward = FLOAT_BYTES * (logits + parameters / batch)  # the clip needs no gradient
    return Work(flops_per_clip, 0.0, forward, backward, parameters / batch)


def count_block_flops(config: ModelConfig, stage: int, device: torch.device | str = "cpu") -> float:
    """Convolution and matmul FLOPs of one eval forward of the reference CAVL block of ``stage`` on one clip."""
    from avfused.bench.cases import block_inputs, build_block

    device = torch.device(device)
    return _forward_flops(build_block(config, stage, "torch", device), *block_inputs(config, stage, 1, device))


def block_work(config: ModelConfig, stage: int, batch: int, flops_per_clip: float) -> Work:
    """Block work from counted FLOPs; minimum bytes: both maps in and out, the weights shared by the batch."""
    from avfused.bench.cases import build_block

    parameters = sum(p.numel() for p in build_block(config, stage, "torch", torch.device("cpu")).parameters())
    side = config.video_sizes()[stage]
    maps = config.widths[stage] * (config.frames * side * side + config.audio_lengths()[stage])
    forward = FLOAT_BYTES * (2 * maps + parameters / batch)
    backward = FLOAT_BYTES * (3 * maps + parameters / batch)  # output gradients in, inputs again, input gradients out
    return Work(flops_per_clip, 0.0, forward, backward, parameters / batch)
