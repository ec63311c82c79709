"""A tiny in-memory dataset of random clips with a planted cue, for smoke tests of the training loop.

ToyClips(config, size, seed)[i] -> a clip dict as ClipDataset yields: video (T, 3, H, W) in [0, 1],
audio (S,), labels; odd indices are fake: their video is darker in the red channel (a visual cue)
and every fourth clip's audio is louder (an audio cue).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from avfused.config import ModelConfig


class ToyClips(Dataset):
    def __init__(self, config: ModelConfig, size: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.video = torch.rand(size, config.frames, 3, config.image_size, config.image_size, generator=generator)
        self.audio = torch.randn(size, config.num_samples, generator=generator) * 0.1
        self.visual_label = torch.arange(size) % 2
        self.audio_label = (torch.arange(size) % 4 == 3).long()
        self.video[self.visual_label == 1, :, 0] *= 0.5
        self.audio[self.audio_label == 1] *= 3.0

    def __len__(self) -> int:
        return self.video.shape[0]

    def __getitem__(self, index: int) -> dict:
        visual, audio = int(self.visual_label[index]), int(self.audio_label[index])
        label = int(visual or audio)
        category = f"{'F' if visual else 'R'}V{'F' if audio else 'R'}A"
        return {
            "video": self.video[index],
            "audio": self.audio[index],
            "label": torch.tensor(label),
            "visual_label": torch.tensor(visual),
            "audio_label": torch.tensor(audio),
            "category": category,
            "method": {"RVRA": "real", "FVRA": "toyswap", "RVFA": "toyvoice", "FVFA": "toyswap+toyvoice"}[category],
            "identity": f"toy{index}",
            "path": f"toy/{index:05d}.mp4",
            "start": 0.0,
        }
