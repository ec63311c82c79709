"""SingleStreamNet: the single-stream audio-visual deepfake detector (SS-AVD).

model(video (B, T, 3, H, W) in [0, 1], audio (B, S) 16 kHz mono) -> ModelOutput with logits
``clip``, ``visual``, ``audio`` (B, 2), index 1 = fake. In training, when the config enables them,
``mismatch`` (clip head on mismatched audio-visual pairs, target fake) and ``style_visual`` /
``style_audio`` (the adversarial statistics probes) are filled too; in eval they are None.
Floating-point inputs of another dtype are cast to the model's; video far outside [0, 1] is refused
(avfused.inputs.prepare_model_inputs).

ModelOutput is a registered pytree (a dataclass whose None fields drop out), so ``torch.export.export``
and ``torch.compile`` take the model as it is; ``avfused.export`` writes deployable files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from avfused.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from avfused.errors import WeightShapeMismatchError
from avfused.inputs import prepare_model_inputs
from avfused.nn.block import CAVLBlock
from avfused.nn.classifier import ClassificationModule
from avfused.nn.frontend import AudioStem
from avfused.nn.style import StatisticsProbe, derangement_partner, random_statistics_swap

FAKE = 1


@dataclass
class FakeProbabilities:
    """Probability that each clip is fake according to each head, each (B,)."""

    clip: torch.Tensor
    visual: torch.Tensor
    audio: torch.Tensor


@dataclass
class ModelOutput:
    clip: torch.Tensor
    visual: torch.Tensor
    audio: torch.Tensor
    mismatch: torch.Tensor | None = None
    mismatch_partner: torch.Tensor | None = None
    style_visual: torch.Tensor | None = None
    style_audio: torch.Tensor | None = None

    def probabilities(self) -> FakeProbabilities:
        """Softmax probability of the 'fake' class for each head."""

        def fake(logits: torch.Tensor) -> torch.Tensor:
            return torch.softmax(logits.float(), dim=-1)[:, FAKE]

        return FakeProbabilities(fake(self.clip), fake(self.visual), fake(self.audio))


torch.export.register_dataclass(ModelOutput, serialized_type_name="avfused.model.ModelOutput")


class VideoStem(nn.Module):
    """Conv3d(3 -> C, 1x7x7, s 1x2x2) + BN + ReLU + MaxPool(1x3x3, s 1x2x2): (B,3,T,H,W) -> (B,C,T,H/4,W/4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv3d(3, channels, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(channels),
            nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Downsample(nn.Module):
    """Between stages: video Conv3d(1x3x3, stride 1x2x2) + BN, audio Conv1d(k3, s2) + BN. Time T is kept."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.video = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(out_channels),
        )
        self.audio = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(out_channels)
        )

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.video(video), self.audio(audio)


class Stage(nn.Module):
    """Optional downsampling, then CAVL blocks, on (video (B, C, T, H, W), audio (B, C, L))."""

    def __init__(self, downsample: nn.Module | None, blocks: list[CAVLBlock]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.downsample is not None:
            video, audio = self.downsample(video, audio)
        for block in self.blocks:
            video, audio = block(video, audio)
        return video, audio


class SingleStreamNet(nn.Module):
    """The detector. ``backend`` ('auto', 'torch', 'triton', 'cuda') picks the hot ops' implementation."""

    TRAINING_ONLY_PREFIXES = ("style_visual.", "style_audio.")

    def __init__(self, config: ModelConfig | None = None, backend: str = "auto") -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1, 1), persistent=False)
        self.video_stem = VideoStem(config.widths[0])
        self.audio_stem = AudioStem(config, config.widths[0])
        total_blocks = sum(config.depths)
        drop_rates = [config.drop_path * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        stages, index = [], 0
        for stage, (width, depth) in enumerate(zip(config.widths, config.depths, strict=True)):
            downsample = Downsample(config.widths[stage - 1], width) if stage > 0 else None
            blocks = []
            for _ in range(depth):
                blocks.append(
                    CAVLBlock(
                        width,
                        config.frames,
                        config.num_tokens(stage),
                        config.window,
                        config.mlp_ratio,
                        config.audio_token_kernel,
                        config.layer_scale_init,
                        drop_rates[index],
                    )
                )
                index += 1
            stages.append(Stage(downsample, blocks))
        self.stages = nn.ModuleList(stages)
        last = config.widths[-1]
        self.classifier = ClassificationModule(last, config.num_classes, config.audio_pool_kernel)
        if config.style_heads:
            self.style_visual = StatisticsProbe(last, config.num_classes)
            self.style_audio = StatisticsProbe(last, config.num_classes)
        self.backend = backend

    # ---- backend ------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        """Set the backend of every hot module (a forced backend is checked when a call runs)."""
        from avfused.backends import FUSED_OPS, check_name, op_module, unavailable_reason

        self._backend = check_name(name)
        if name != "auto":
            unavailable_reason(name)
        if name != "torch":  # import the ops' modules now: an import inside a compiled forward breaks the graph
            for op in FUSED_OPS:
                op_module(op)
        for module in self.modules():
            if module is not self and hasattr(module, "backend"):
                module.backend = name

    # ---- forward ------------------------------------------------------------------------
    def features(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-stage features: video (B, C, T, h, w) and audio (B, C, l). Inputs as in forward, unchecked."""
        video = (video.transpose(1, 2) - self.pixel_mean) / self.pixel_std
        video, audio = self.video_stem(video), self.audio_stem(audio)
        for stage in self.stages:
            video, audio = stage(video, audio)
        return video, audio

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> ModelOutput:
        video, audio = prepare_model_inputs(video, audio, self.config, self.pixel_mean.dtype)  # cast, range check
        video, audio = self.features(video, audio)
        c = self.config
        training = self.training
        batch = video.shape[0]
        style_visual = style_audio = None
        if training and c.style_heads:
            style_visual, style_audio = self.style_visual(video), self.style_audio(audio)
        # batch > 1 is a shape, not a random number: no data-dependent branch, so compile traces training
        if training and c.feature_swap and batch > 1:
            video, audio = random_statistics_swap(video, audio, c.feature_swap_prob, c.feature_swap_alpha)
        f_v, f_a = self.classifier.features(video, audio)
        output = ModelOutput(
            clip=self.classifier.clip_logits(f_v, f_a),
            visual=self.classifier.visual_head(f_v),
            audio=self.classifier.audio_head(f_a),
            style_visual=style_visual,
            style_audio=style_audio,
        )
        if training and c.mismatch_pairing and batch > 1:
            partner = derangement_partner(batch, video.device)
            output.mismatch = self.classifier.clip_logits(f_v, f_a[partner])
            output.mismatch_partner = partner
        return output

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, backend: str = "auto", device: str | torch.device = "cpu"
    ) -> SingleStreamNet:
        """The model of an avfused checkpoint (its ModelConfig and weights), in eval mode on ``device``.

        Raises avfused.errors.CheckpointError for a missing, truncated or altered file. The decision
        threshold chosen in training: ``avfused.calibration.decision_threshold(path)``.
        """
        from avfused.checkpoint import load_model

        return load_model(path, backend, device)

    @torch.no_grad()
    def predict_proba(self, video: torch.Tensor, audio: torch.Tensor) -> FakeProbabilities:
        """Fake probabilities (B,) from each head, in eval mode (the mode is restored afterwards)."""
        was_training = self.training
        self.eval()
        try:
            return self(video, audio).probabilities()
        finally:
            self.train(was_training)

    # ---- parameters and weights ---------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """{'inference': parameters used at inference, 'training_only': the adversarial probes'}."""
        counts = {"inference": 0, "training_only": 0}
        for name, parameter in self.named_parameters():
            key = "training_only" if name.startswith(self.TRAINING_ONLY_PREFIXES) else "inference"
            counts[key] += parameter.numel()
        return counts

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, but a tensor of another shape (another input size or preset) is a named error."""
        own = self.state_dict()
        wrong = [
            f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
            for key, value in state_dict.items()
            if key in own and tuple(own[key].shape) != tuple(value.shape)
        ]
        if wrong:
            hint = (
                "SAAVM position embeddings depend on frames and image_size"
                if any(".pos" in line for line in wrong)
                else "the widths/depths differ"
            )
            raise WeightShapeMismatchError(
                f"weights do not fit this model ({hint}); build the model with the checkpoint's ModelConfig. "
                + "; ".join(wrong[:5])
                + (f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else "")
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
