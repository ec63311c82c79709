"""What the benchmarks run: the subjects (each hot op, the whole model), the modes, and the steps.

A Case is (subject, mode, batch). Subjects: the four fused ops of ``avfused.reference``, called with
the shapes the model gives them at stage 0 (the largest maps), and ``model`` (SingleStreamNet); on request
(not in the default set) ``block0`` .. ``block3``, one CAVL block (VPM + SAAVM) at each stage's shapes.
Modes:
    inference         eval mode, no autograd
    forward           training mode, autograd recording (what a training forward costs)
    forward_backward  forward, then backward into every input that needs a gradient and every weight
    train_step        zero grads, forward, loss, backward, AdamW step
plan_cases runs inference at every batch size and the training modes at one (the training batch, else the
largest). ``amp`` (torch.bfloat16 / torch.float16, or None) runs the model under autocast and gives the ops
their activations in that dtype, as autocast would.

op_step(fn, inputs, mode) / block_step(block, inputs, mode) / model_step(model, config, batch, device, mode)
-> a step: a callable taking no arguments that does one call of the case; timing.measure times it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avfused.config import ModelConfig
from avfused.model import FAKE, ModelOutput, SingleStreamNet
from avfused.nn.block import CAVLBlock
from avfused.nn.frontend import AudioStem
from avfused.nn.saavm import SAAVM
from avfused.nn.vpm import ConvMLP, LargeKernelAttention

OPS = ("audio_frontend_stem", "joint_token_attention", "large_kernel_attention", "conv_mlp")
MODEL = "model"
SUBJECTS = OPS + (MODEL,)  # what --ops all runs
BLOCKS = tuple(f"block{stage}" for stage in range(4))  # one CAVL block per stage of the presets: on request
ALL_SUBJECTS = OPS + BLOCKS + (MODEL,)  # every subject, in the order the report shows them
MODES = ("inference", "forward", "forward_backward", "train_step")

LEARNING_RATE, WEIGHT_DECAY, LABEL_SMOOTHING = 5e-4, 0.01, 0.1  # docs/design.md, section 1

DATA, ACTIVATION, PARAMETER = "data", "activation", "parameter"  # roles of an op's arguments


@dataclass(frozen=True)
class Case:
    subject: str
    mode: str
    batch: int

    @property
    def key(self) -> tuple[str, str, int]:
        return self.subject, self.mode, self.batch


def plan_cases(
    subjects: Sequence[str], modes: Sequence[str], batch_sizes: Sequence[int], train_batch: int | None = None
) -> list[Case]:
    """Inference at every batch size, the training modes at ``train_batch`` (default: the largest size)."""
    train_batch = train_batch or max(batch_sizes)
    cases = []
    for subject in subjects:
        for mode in modes:
            sizes = sorted(set(batch_sizes)) if mode == "inference" else [train_batch]
            cases.extend(Case(subject, mode, batch) for batch in sizes)
    return cases


def quick_config() -> ModelConfig:
    """Tiny shapes for --quick (CI, smoke test): every code path, milliseconds per call on a CPU."""
    return ModelConfig(
        widths=(4, 8), depths=(1, 2), frames=3, image_size=30, clip_seconds=0.06, sinc_filters=8, sinc_kernel_size=31
    )


# ---------------------------------------------------------------------------------------------
# op inputs: the tensors the model passes to each op, with freshly initialised module weights
# ---------------------------------------------------------------------------------------------
@dataclass
class OpInputs:
    tensors: list[torch.Tensor]
    roles: list[str]  # DATA (no gradient), ACTIVATION (gradient, not optimised), PARAMETER (both)
    kwargs: dict


def op_inputs(op: str, config: ModelConfig, batch: int, device: torch.device, seed: int = 0) -> OpInputs:
    """Arguments of one stage-0 call of ``op`` for ``batch`` clips; the same seed gives the same tensors."""
    torch.manual_seed(seed)
    channels, side, frames = config.widths[0], config.video_sizes()[0], config.frames
    images = batch * frames
    if op == "audio_frontend_stem":
        stem = AudioStem(config, channels)
        wave = 0.1 * torch.randn(batch, config.num_samples)
        tensors = [wave, stem.frontend.low_hz, stem.frontend.band_hz, stem.weight]
        roles, kwargs = [DATA, PARAMETER, PARAMETER, PARAMETER], stem.frontend.op_kwargs()
    elif op == "joint_token_attention":
        saavm = SAAVM(channels, frames, config.num_tokens(0), config.window, config.audio_token_kernel)
        tokens = torch.randn(batch, config.num_tokens(0), config.token_dim)
        tensors = [tokens, saavm.pos, saavm.norm.weight, saavm.norm.bias, saavm.mix.weight, saavm.mix.bias]
        roles, kwargs = [ACTIVATION] + [PARAMETER] * 5, {}
    elif op == "large_kernel_attention":
        lka = LargeKernelAttention(channels)
        p = torch.rand(images, channels, side, side)  # the op's input comes out of a ReLU
        weights = [lka.dw5.weight, lka.dw5.bias, lka.dw7.weight, lka.dw7.bias, lka.pw.weight, lka.pw.bias]
        tensors, roles, kwargs = [p] + weights, [ACTIVATION] + [PARAMETER] * 6, {}
    elif op == "conv_mlp":
        mlp = ConvMLP(channels, config.mlp_ratio)
        x = torch.randn(images, channels, side, side)
        weights = [mlp.expand.weight, mlp.expand.bias, mlp.dw.weight, mlp.dw.bias, mlp.project.weight, mlp.project.bias]
        tensors, roles, kwargs = [x] + weights, [ACTIVATION] + [PARAMETER] * 6, {}
    else:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    tensors = [t.detach().to(device).contiguous() for t in tensors]
    return OpInputs(tensors, roles, kwargs)


def autocast(device: torch.device, amp: torch.dtype | None):
    """torch.autocast in ``amp`` on ``device``, or nothing when amp is None."""
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def op_step(fn: Callable, inputs: OpInputs, mode: str, amp: torch.dtype | None = None) -> Callable[[], None]:
    """One call of an op in ``mode``; for the backward modes the output gradient is fixed random noise.

    With ``amp`` the data and activations come in that dtype (what autocast's layers hand the op), the
    parameters stay float32.
    """
    train = mode != "inference"
    pairs = list(zip(inputs.tensors, inputs.roles, strict=True))
    tensors = [
        (t if amp is None or role == PARAMETER else t.to(amp)).detach().clone().requires_grad_(train and role != DATA)
        for t, role in pairs
    ]
    leaves = [t for t in tensors if t.requires_grad]
    parameters = [t for t, (_, role) in zip(tensors, pairs, strict=True) if role == PARAMETER]
    device = tensors[0].device
    kwargs = inputs.kwargs
    if mode == "inference":

        def step() -> None:
            with torch.no_grad(), autocast(device, amp):
                fn(*tensors, **kwargs)

        return step
    if mode == "forward":

        def forward() -> None:
            with autocast(device, amp):
                fn(*tensors, **kwargs)

        return forward
    optimizer = (
        torch.optim.AdamW(parameters, LEARNING_RATE, weight_decay=WEIGHT_DECAY) if mode == "train_step" else None
    )
    grad_output: list[torch.Tensor] = []

    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        with autocast(device, amp):
            out = fn(*tensors, **kwargs)
        if not grad_output:
            generator = torch.Generator(out.device).manual_seed(1)
            grad_output.append(torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype))
        out.backward(grad_output[0])
        if optimizer is not None:
            optimizer.step()

    return step


# ---------------------------------------------------------------------------------------------
# the whole model
# ---------------------------------------------------------------------------------------------
def model_inputs(config: ModelConfig, batch: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(video (B, T, 3, H, W) in [0, 1], audio (B, S), labels (B,)); the same seed gives the same tensors."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, config.frames, 3, config.image_size, config.image_size, generator=generator)
    audio = 0.1 * torch.randn(batch, config.num_samples, generator=generator)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    return video.to(device), audio.to(device), labels.to(device)


def training_loss(output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
    """Clip + visual + audio cross-entropy (label smoothing 0.1), plus the mismatch pairs and probes when present."""

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=LABEL_SMOOTHING)

    loss = ce(output.clip, labels) + ce(output.visual, labels) + ce(output.audio, labels)
    if output.mismatch is not None:
        loss = loss + ce(output.mismatch, torch.full_like(labels, FAKE))
    for probe in (output.style_visual, output.style_audio):
        if probe is not None:
            loss = loss + ce(probe, labels)
    return loss


def build_model(config: ModelConfig, backend: str, device: torch.device, seed: int = 0) -> SingleStreamNet:
    """A model with the weights every variant shares (same seed), on ``device``."""
    torch.manual_seed(seed)
    return SingleStreamNet(config, backend=backend).to(device)


def model_step(
    model: torch.nn.Module,
    config: ModelConfig,
    batch: int,
    device: torch.device,
    mode: str,
    seed: int = 0,
    amp: torch.dtype | None = None,
) -> Callable:
    """One call of the whole model in ``mode`` (the model is switched to eval or train mode here), under
    autocast in ``amp`` when given (the loss and the optimizer step in float32, as in training).

    Training calls re-seed the RNG first, so every call (and every variant) makes the same random choices
    (statistics swap, mismatch partner): the same work each time, and no new graph for torch.compile mid-timing.
    """
    video, audio, labels = model_inputs(config, batch, device, seed)
    if mode == "inference":
        model.eval()

        def step() -> None:
            with torch.no_grad(), autocast(device, amp):
                model(video, audio)

        return step
    model.train()
    if mode == "forward":

        def forward() -> None:
            torch.manual_seed(seed)
            with autocast(device, amp):
                model(video, audio)

        return forward
    optimizer = None
    if mode == "train_step":
        optimizer = torch.optim.AdamW(model.parameters(), LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def step() -> None:
        torch.manual_seed(seed)
        model.zero_grad(set_to_none=True)
        with autocast(device, amp):
            output = model(video, audio)
        training_loss(output, labels).backward()
        if optimizer is not None:
            optimizer.step()

    return step


# ---------------------------------------------------------------------------------------------
# one CAVL block (VPM + SAAVM) at a stage's shapes
# ---------------------------------------------------------------------------------------------
def block_stage(subject: str) -> int | None:
    """The stage of a block subject (``block2`` -> 2), None for any other subject."""
    return int(subject.removeprefix("block")) if subject in BLOCKS else None


def build_block(config: ModelConfig, stage: int, backend: str, device: torch.device, seed: int = 0) -> CAVLBlock:
    """A block as SingleStreamNet builds it at ``stage`` (no drop-path), with weights every variant shares."""
    torch.manual_seed(seed)
    block = CAVLBlock(config.widths[stage], config.frames, config.num_tokens(stage), config.window,
                      config.mlp_ratio, config.audio_token_kernel, config.layer_scale_init, 0.0, backend)
    return block.to(device)


def block_inputs(config: ModelConfig, stage: int, batch: int, device: torch.device,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """video (B, C, T, H, W) and audio (B, C, L) as the block at ``stage`` gets them."""
    generator = torch.Generator().manual_seed(seed)
    channels, side = config.widths[stage], config.video_sizes()[stage]
    video = torch.randn(batch, channels, config.frames, side, side, generator=generator)
    audio = torch.randn(batch, channels, config.audio_lengths()[stage], generator=generator)
    return video.to(device), audio.to(device)


def block_step(block: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], mode: str,
               amp: torch.dtype | None = None) -> Callable[[], None]:
    """One call of a block in ``mode``. The backward modes take the gradient of both inputs too (inside a
    network the block's input needs one) from fixed random output gradients."""
    device = inputs[0].device
    if mode == "inference":
        block.eval()

        def step() -> None:
            with torch.no_grad(), autocast(device, amp):
                block(*inputs)

        return step
    block.train()
    leaves = [t.detach().clone().requires_grad_(mode != "forward") for t in inputs]
    if mode == "forward":

        def forward() -> None:
            with autocast(device, amp):
                block(*leaves)

        return forward
    optimizer = None
    if mode == "train_step":
        optimizer = torch.optim.AdamW(block.parameters(), LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(t.shape, generator=generator).to(device) for t in inputs]

    def step() -> None:
        block.zero_grad(set_to_none=True)
        for leaf in leaves:
            leaf.grad = None
        with autocast(device, amp):
            video, audio = block(*leaves)
        torch.autograd.backward([video, audio], [g.to(video.dtype) for g in grads])
        if optimizer is not None:
            optimizer.step()

    return step
