"""The reference building blocks of SingleStreamNet, each a drop-in torch.nn module.

AudioFrontEnd  wave (B, S) -> (B, F, S)
AudioStem      wave (B, S) -> (B, C, ceil(S/4))
VPM            (B, C, T, H, W) -> same
SAAVM          (B, C, T, H, W), (B, C, L) -> same      (num_tokens: token_count(T, H, W, window))
CAVLBlock      (B, C, T, H, W), (B, C, L) -> same
ClassificationModule  (B, C, T, H, W), (B, C, L) -> visual, audio, clip logits (B, K)

Any width, frame count and map size works (each module takes them as arguments); ``backend=`` on a module
picks who computes its fused ops ("auto", "torch", "triton", "cuda"), so modules in one network can differ.
See the README's "Inside another network".
"""

from avfused.nn.block import CAVLBlock
from avfused.nn.classifier import ClassificationModule
from avfused.nn.frontend import AudioFrontEnd, AudioStem
from avfused.nn.layers import DropPath, LayerScale
from avfused.nn.saavm import SAAVM, token_count
from avfused.nn.style import StatisticsProbe, swap_statistics
from avfused.nn.vpm import VPM, ConvMLP, FrameMix, LargeKernelAttention

__all__ = [
    "AudioFrontEnd",
    "AudioStem",
    "CAVLBlock",
    "ClassificationModule",
    "ConvMLP",
    "DropPath",
    "FrameMix",
    "LargeKernelAttention",
    "LayerScale",
    "SAAVM",
    "StatisticsProbe",
    "VPM",
    "swap_statistics",
    "token_count",
]
