"""torch.hub entry points: the SingleStreamNet presets (untrained: avfused publishes no weights) and a trained
model from an avfused checkpoint file.

    torch.hub.load("path/to/avfused", "from_checkpoint", "runs/demo/best.safetensors", source="local")
    torch.hub.load("path/to/avfused", "small", source="local", backend="torch")
    torch.hub.load("path/to/avfused", "demo", source="local", frames=8)      # ModelConfig overrides

Each returns an ``avfused.SingleStreamNet``: model(video (B, T, 3, H, W) in [0, 1], audio (B, S)) -> logits
(B, 2) per head. From a source tree without ``pip install`` the C++/CUDA extension is not built and
``backend="auto"`` runs the reference ops.
"""

from __future__ import annotations

dependencies = ["torch", "numpy", "safetensors", "tqdm"]


def from_checkpoint(path: str, backend: str = "auto", device: str = "cpu"):
    """The trained SingleStreamNet of an avfused checkpoint (``avfused train`` writes them), in eval mode.

    Its decision threshold: ``avfused.calibration.decision_threshold(path)``.
    """
    from avfused import SingleStreamNet

    return SingleStreamNet.from_checkpoint(path, backend=backend, device=device)


def _preset(name: str, backend: str, overrides: dict):
    from avfused import ModelConfig, SingleStreamNet

    return SingleStreamNet(ModelConfig.preset(name, **overrides), backend=backend)


def small(backend: str = "auto", **overrides):
    """The paper's 0.48M model (10 frames of 224x224, 3 s of 16 kHz audio), untrained."""
    return _preset("small", backend, overrides)


def large(backend: str = "auto", **overrides):
    """The large model: widths (32, 64, 128, 256), depths (3, 3, 9, 3), untrained."""
    return _preset("large", backend, overrides)


def demo(backend: str = "auto", **overrides):
    """The demo preset (4 frames of 96x96, 1 s of audio) that `avfused train` uses on synthetic data, untrained."""
    return _preset("demo", backend, overrides)
