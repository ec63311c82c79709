"""Deployable files from a trained model: ONNX (onnxruntime and other ONNX runtimes) and torch.export (.pt2).

    export_model(model, path, format="onnx" | "torch", batch=2) -> Path
    run_exported(path, video, audio)  -> {"clip", "visual", "audio"[, "inputs_finite"]} numpy arrays
    check_export(path, model, batch=3) -> the largest |logit difference| to the model on a random batch

The file holds the eval-mode model built from the reference ops (backend "torch"), so it runs without
avfused and without its C++/CUDA extension (``torch.export.load`` needs torch only). Inputs: ``video``
(B, T, 3, H, W) float32 in [0, 1] and ``audio`` (B, S) float32, with T, H, W, S fixed by the model's
ModelConfig and the batch B dynamic (>= 1, any size, whatever ``batch`` was traced with). Outputs, in order:

    torch  (clip, visual, audio): logits (B, 2), index 1 = fake -- the eval-mode model's ModelOutput
    onnx   clip_logits, visual_logits, audio_logits (B, 2), and inputs_finite (B,) bool

Input checks where the format allows them:
    torch  T, 3, H, W, S and equal batches are checked by the program's own guards (AssertionError "Guard
           failed: ..."); NaN or inf in an input raises RuntimeError "video holds NaN or infinite values", and
           video outside [-0.5, 1.5] (0-255 or normalised frames) RuntimeError "video values lie outside ..."
           (assertions kept in the graph). Not named: another dtype or an empty batch fail inside the graph
           (RuntimeError "expected scalar type ...", "cannot reshape tensor of 0 elements ...").
    onnx   shapes and dtype are checked by the runtime (onnxruntime: InvalidArgument, or Fail for unequal
           batches). ONNX has no assertion operator, so a non-finite input cannot raise: ``inputs_finite``
           is False for every clip whose video or audio holds NaN or inf, and that clip's logits mean
           nothing. The video range is not checked. An empty batch gives empty outputs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avfused.errors import ExportError
from avfused.inputs import VIDEO_REFUSED_ABOVE, VIDEO_REFUSED_BELOW

FORMATS = ("onnx", "torch")
SUFFIX = {"onnx": ".onnx", "torch": ".pt2"}
INPUT_NAMES = ("video", "audio")
ONNX_OUTPUT_NAMES = ("clip_logits", "visual_logits", "audio_logits", "inputs_finite")
HEADS = ("clip", "visual", "audio")
# fp32 logits of the file against the checkpoint's eval-mode model (the bound)
TOLERANCE = 1e-4


def _finite_per_clip(video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """(B,) True where both inputs of a clip are free of NaN and inf."""
    return torch.isfinite(video).flatten(1).all(1) & torch.isfinite(audio).all(1)


class DeployedDetector(nn.Module):
    """The eval-mode SingleStreamNet as a function of tensors only, the form the exporters take.

    forward(video (B, T, 3, H, W), audio (B, S)) -> (clip, visual, audio) logits (B, 2); with
    ``finite_output`` also inputs_finite (B,) bool (ONNX), else a non-finite input fails an assertion.
    """

    def __init__(self, model: nn.Module, finite_output: bool) -> None:
        super().__init__()
        self.model = model
        self.finite_output = finite_output

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(video, audio)
        logits = (output.clip, output.visual, output.audio)
        if self.finite_output:
            return logits + (_finite_per_clip(video, audio),)
        # the model skips its data-dependent checks while tracing (Python branches); these stay in the graph
        torch._assert_async(torch.isfinite(video).all(), "video holds NaN or infinite values")
        torch._assert_async(torch.isfinite(audio).all(), "audio holds NaN or infinite values")
        in_range = ((video >= VIDEO_REFUSED_BELOW) & (video <= VIDEO_REFUSED_ABOVE)).all()
        torch._assert_async(
            in_range,
            f"video values lie outside [{VIDEO_REFUSED_BELOW}, {VIDEO_REFUSED_ABOVE}]: "
            "the model expects RGB in [0, 1] (divide 0-255 frames by 255; do not normalise them)",
        )
        return logits


def _deployable(model: nn.Module) -> nn.Module:
    """A CPU float32 eval-mode copy of ``model`` on the reference ops (the caller's model is left alone)."""
    copied = copy.deepcopy(model).to("cpu", torch.float32).eval()
    copied.backend = "torch"
    return copied


def example_inputs(config, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of ``config``'s input shapes: video uniform in [0, 1], audio N(0, 0.1^2)."""
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(batch, config.frames, 3, config.image_size, config.image_size, generator=generator)
    audio = torch.randn(batch, config.num_samples, generator=generator) * 0.1
    return video, audio


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """The ONNX exporter and its optimiser log every rewrite at INFO (and torchvision's absence): keep their
    loggers at ERROR while exporting, unless avfused logs at DEBUG (avfused -v)."""
    if logging.getLogger("avfused").isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*", category=UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _require(module: str, extra: str = "export") -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise ExportError(f"{module} is not installed ({exc}); pip install 'avfused[{extra}]'") from None


def export_model(model: nn.Module, path: str | os.PathLike, format: str = "onnx", batch: int = 2) -> Path:
    """Write ``model`` (a SingleStreamNet) to ``path`` as ONNX or a torch.export program; see the module
    docstring for the inputs, outputs and checks. ``batch``: the example batch traced (any B runs later)."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; expected one of {FORMATS}")
    if batch < 2:
        raise ExportError(f"trace with a batch of at least 2 (got {batch}); torch.export specialises a batch of 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deployable = _deployable(model)
    inputs = example_inputs(deployable.config, batch)
    clips = torch.export.Dim("batch", min=1)
    dynamic = ({0: clips}, {0: clips})
    if format == "torch":
        program = torch.export.export(DeployedDetector(deployable, finite_output=False), inputs, dynamic_shapes=dynamic)
        torch.export.save(program, str(path))
        return path
    _require("onnx")
    _require("onnxscript")
    with _quiet_onnx_exporter():
        program = torch.onnx.export(
            DeployedDetector(deployable, finite_output=True).eval(),
            inputs,
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=list(INPUT_NAMES),
            output_names=list(ONNX_OUTPUT_NAMES),
            verbose=False,
        )
        # one self-contained file: the weights are far under ONNX's 2 GB limit for a single file
        program.save(str(path), external_data=False)
    return path


def format_of(path: str | os.PathLike) -> str:
    """'onnx' for *.onnx, 'torch' for *.pt2 (the suffixes export_model's CLI writes)."""
    suffix = Path(path).suffix.lower()
    for name, expected in SUFFIX.items():
        if suffix == expected:
            return name
    raise ExportError(f"{path}: cannot tell the format from the suffix {suffix!r}; expected .onnx or .pt2")


def run_exported(path: str | os.PathLike, video: torch.Tensor, audio: torch.Tensor) -> dict[str, np.ndarray]:
    """Run an exported file on one batch: onnxruntime for .onnx, torch.export.load for .pt2."""
    if format_of(path) == "torch":
        outputs = torch.export.load(str(path)).module()(video, audio)
        return {head: value.detach().numpy() for head, value in zip(HEADS, outputs, strict=True)}
    _require("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"video": video.numpy(), "audio": audio.numpy()})
    return dict(zip(HEADS + ("inputs_finite",), outputs, strict=True))


def check_export(path: str | os.PathLike, model: nn.Module, batch: int = 3) -> float:
    """Largest |logit difference| between the file and ``model`` in eval mode on a random batch of ``batch``
    clips; raises ExportError when it exceeds TOLERANCE."""
    deployable = _deployable(model)
    video, audio = example_inputs(deployable.config, batch)
    with torch.no_grad():
        expected = deployable(video, audio)
    got = run_exported(path, video, audio)
    difference = max(float(np.abs(got[head] - getattr(expected, head).numpy()).max()) for head in HEADS)
    if not difference <= TOLERANCE:
        raise ExportError(f"{path}: its logits differ from the model's by {difference:.3g} (> {TOLERANCE})")
    return difference
