"""avfused: lightweight single-stream audio-visual deepfake detection with fused kernels.

    >>> import avfused, torch
    >>> model = avfused.SingleStreamNet()            # the 0.48M 'small' model, backend='auto'
    >>> out = model(torch.rand(1, 10, 3, 224, 224), torch.randn(1, 48000))
    >>> out.clip.shape                                # (B, 2) logits, index 1 = fake
    >>> fast = avfused.fold_for_inference(model.eval())  # the same function, batch norms folded (CPU inference)
"""

from avfused import errors
from avfused.backends import available_backends
from avfused.config import ModelConfig
from avfused.inference import FoldedNet, fold_for_inference
from avfused.model import FakeProbabilities, ModelOutput, SingleStreamNet

__version__ = "0.1.0"

__all__ = [
    "FakeProbabilities",
    "FoldedNet",
    "ModelConfig",
    "ModelOutput",
    "SingleStreamNet",
    "available_backends",
    "errors",
    "fold_for_inference",
    "__version__",
]
