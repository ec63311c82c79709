"""The training loss of docs/design.md, section 1, from a ModelOutput and the labels.

    loss = CE(clip) + CE(visual) + CE(audio)            label smoothing 0.1; the clip head learns the clip
                                                        label, the visual and audio heads their modality's
                                                        label (-1 = unknown, e.g. DFDC audio: left out)
         + mismatch_weight * CE(mismatch, fake)         clip head on mismatched audio-visual pairs (0.25)
         + probe_weight * (CE(style_visual) + CE(style_audio))   true labels; the probes see detached
                                                        features, so this term trains only them
Terms whose output is None (eval mode, switched off in the config, batch of one) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avfused.model import FAKE, ModelOutput

PARTS = ("clip", "visual", "audio", "mismatch", "probes")


@dataclass(frozen=True)
class LossWeights:
    label_smoothing: float = 0.1
    mismatch: float = 0.25
    probes: float = 1.0


def detection_loss(
    output: ModelOutput,
    labels: torch.Tensor,
    visual_labels: torch.Tensor | None = None,
    audio_labels: torch.Tensor | None = None,
    weights: LossWeights = LossWeights(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total loss, {part: detached loss}) for logits (B, 2) and labels (B,) long (modality labels
    default to the clip label)."""
    smoothing = weights.label_smoothing

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: the loss in fp32
        if bool((target < 0).all()):  # nothing known for this head in this batch
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, label_smoothing=smoothing, ignore_index=-1)

    visual_labels = labels if visual_labels is None else visual_labels
    audio_labels = labels if audio_labels is None else audio_labels
    parts = {
        "clip": ce(output.clip, labels),
        "visual": ce(output.visual, visual_labels),
        "audio": ce(output.audio, audio_labels),
    }
    total = parts["clip"] + parts["visual"] + parts["audio"]
    if output.mismatch is not None and weights.mismatch > 0:
        fake = torch.full_like(labels, FAKE)
        parts["mismatch"] = ce(output.mismatch, fake)
        total = total + weights.mismatch * parts["mismatch"]
    probes = [p for p in (output.style_visual, output.style_audio) if p is not None]
    if probes and weights.probes > 0:
        parts["probes"] = sum(ce(p, labels) for p in probes)
        total = total + weights.probes * parts["probes"]
    return total, {k: v.detach() for k, v in parts.items()}
