"""Inference-time folding: ``fold_for_inference(model) -> FoldedNet``, the function of an eval-mode
SingleStreamNet computed with fewer operations and fewer passes over memory.

    folded = fold_for_inference(model)         # a copy: the model itself is left as it is (and trains as before)
    out = folded(video (B, T, 3, H, W), audio (B, S))   # ModelOutput: clip, visual, audio logits (B, 2)

What is folded (docs/design.md, section 2; the algebra is in avfused.fold), and the ops that compute it:

* the pixel normalisation and the stem's batch norm into the stem convolution, whose border is padded with
  the pixel mean; conv + ReLU + max-pool in one pass (op ``video_stem``);
* every batch norm after a convolution into it (downsampling, the SAAVM squeezes), every batch norm before a
  1x1 convolution into it (the VPM's two pre-norms), the layer scales into the convolutions they scale, and
  the VPM's proj_out bias into the conv MLP's biases;
* the VPM's attention branch, both 1x1 convolutions around the large-kernel attention and the residual, in
  one pass where the C++ path runs it (op ``large_kernel_attention_residual``);
* the SAAVM squeeze convolutions computed straight into tokens (ops ``video_squeeze_tokens``,
  ``audio_squeeze_tokens``), and the scatter-back convolutions with the batch norms after the SAAVM folded
  into them plus one scale of the residual, in one pass each (``video_expand_residual``,
  ``audio_expand_residual``); the audio stem's batch-norm scale into the stem weight (the op is linear in it);
* the classifier's depthwise pooling convolutions followed by a global mean into edge sums: the mean of a
  'same' convolution is its bias plus, per tap, the weight times the sum of what that tap reads.

Video stays as (B*T, C, H, W) images from the stem to the classifier: every video convolution of the model
is per frame, and the two frame mixes of each VPM become (T, T) matrix products over contiguous frames, so
no transposes remain. The batch norm after each VPM stays a per-channel affine map (a padded convolution
reads it). Inference only: a FoldedNet has no batch statistics, drop-path or training heads, and its
forward in train mode raises InferenceOnlyError. Its weights do not require grad, so the fused C++ path
runs even outside torch.no_grad(). ``inference_model`` is the choice ``avfused detect`` / ``eval`` make.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from avfused import backends
from avfused.errors import InferenceOnlyError, InputShapeError
from avfused.fold import (
    affine_then_pointwise,
    batch_norm_affine,
    conv_then_affine,
    normalisation_into_conv,
)
from avfused.inputs import check_model_inputs
from avfused.model import FakeProbabilities, ModelOutput, SingleStreamNet

Tensor = torch.Tensor


def _frozen(tensor: Tensor) -> nn.Parameter:
    """A detached copy as a parameter that needs no gradient (so autograd never records through it)."""
    return nn.Parameter(tensor.detach().clone(), requires_grad=False)


def _tensors(parameters: nn.ParameterList) -> tuple[Tensor, ...]:
    """A ParameterList's tensors in order, read from its dict at once (indexing it costs a string conversion and
    a module lookup per item, a few hundred per clip)."""
    return tuple(parameters._parameters.values())


def _channels(vector: Tensor, dims: int) -> Tensor:
    """A (C,) vector shaped to broadcast over dimension 1 of a ``dims``-dimensional tensor."""
    return vector.reshape((1, -1) + (1,) * (dims - 2))


def mix_frames(weight: Tensor, x: Tensor, frames: int) -> Tensor:
    """FrameMix on (B*T, C, H, W) images: out[b, s] = sum_t weight[s, t] x[b, t], one matrix product."""
    return torch.matmul(weight, x.reshape(x.shape[0] // frames, frames, -1)).reshape(x.shape)


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None = None, residual: Tensor | None = None) -> Tensor:
    """A 1x1 convolution of (N, C, ...) with weight (O, C): bias + weight @ x, or residual + weight @ x, as one
    batched matrix product (faster on the CPU than ATen's 1x1 convolution at these sizes)."""
    images, out_channels = x.shape[0], weight.shape[0]
    flat, weights = x.reshape(images, x.shape[1], -1), weight.expand(images, *weight.shape)
    if residual is not None:
        out = torch.baddbmm(residual.reshape(images, out_channels, -1), weights, flat)
    elif bias is not None:
        out = torch.baddbmm(bias[:, None], weights, flat)
    else:
        out = torch.bmm(weights, flat)
    return out.reshape(images, out_channels, *x.shape[2:])


def tap_sums(x: Tensor, dim: int, kernel: int) -> Tensor:
    """For a stride-1 'same' convolution of odd ``kernel`` along ``dim``: per tap k, the sum of x over the
    positions tap k reads across all outputs. Returns x with ``dim`` replaced by a last dimension (kernel,).

    Tap k reads positions o + k - kernel // 2 (zero outside), so it misses the first k - kernel // 2 or the
    last kernel // 2 - k positions: sum = total - that edge.
    """
    x = x.movedim(dim, -1)
    size, half = x.shape[-1], kernel // 2
    total = x.sum(dim=-1, keepdim=True)
    edge = min(half, size)
    zero = torch.zeros_like(total)
    heads = torch.cat([zero, x[..., :edge].cumsum(dim=-1)], dim=-1)  # heads[m]: sum of the first m
    tails = torch.cat([zero, x[..., size - edge :].flip(-1).cumsum(dim=-1)], dim=-1)  # tails[m]: last m
    left = torch.tensor([min(half - k, edge) for k in range(half)], device=x.device)  # taps k < half miss a tail
    right = torch.tensor([min(k - half, edge) for k in range(half, kernel)], device=x.device)  # the rest a head
    return total - torch.cat([tails.index_select(-1, left), heads.index_select(-1, right)], dim=-1)


# ---------------------------------------------------------------------------------------------
# folded modules
# ---------------------------------------------------------------------------------------------
class _Folded(nn.Module):
    """A folded module: ``backend`` picks the fused ops as in SingleStreamNet's modules."""

    backend = "auto"

    def op(self, name: str, device: torch.device):
        return backends.module_op(name, self, device)


class FoldedVideoStem(_Folded):
    """Normalisation + Conv(1x7x7, s2) + BN + ReLU + MaxPool(3x3, s2) in one op: (N, 3, H, W) -> (N, C, H/4, W/4)."""

    def __init__(self, model: SingleStreamNet) -> None:
        super().__init__()
        conv, norm, _, pool = model.video_stem.layers
        if conv.kernel_size[0] != 1 or conv.stride != (1, 2, 2) or conv.padding[1:] != (conv.kernel_size[1] // 2,) * 2:
            raise ValueError(f"the video stem's convolution {conv} is not the (1, K, K) stride-2 'same' one it folds")
        if (pool.kernel_size, pool.stride, pool.padding) != ((1, 3, 3), (1, 2, 2), (0, 1, 1)):
            raise ValueError(f"the video stem's pooling {pool} is not the 3x3 stride-2 one it folds")
        mean, std = model.pixel_mean.flatten(), model.pixel_std.flatten()
        weight, bias = normalisation_into_conv(conv.weight[:, :, 0], torch.zeros_like(conv.weight[:, 0, 0, 0, 0]),
                                               mean, std)
        weight, bias = conv_then_affine(weight, bias, *batch_norm_affine(norm))
        self.weight, self.bias, self.border = _frozen(weight), _frozen(bias), _frozen(mean.to(weight.dtype))

    def forward(self, frames: Tensor) -> Tensor:
        return self.op("video_stem", frames.device)(frames, self.weight, self.bias, self.border)


class FoldedAudioStem(_Folded):
    """The fused front end + stem with the stem's BN scale in its weight and the shift added: (B, S) -> (B, C, L)."""

    def __init__(self, model: SingleStreamNet) -> None:
        super().__init__()
        stem = model.audio_stem
        self.frontend = copy.deepcopy(stem.frontend).requires_grad_(False)
        weight, bias = conv_then_affine(stem.weight, None, *batch_norm_affine(stem.norm))
        self.weight, self.bias = _frozen(weight), _frozen(bias)

    def forward(self, wave: Tensor) -> Tensor:
        fe = self.frontend
        op = self.op("audio_frontend_stem", wave.device)
        return op(wave, fe.low_hz, fe.band_hz, self.weight, **fe.op_kwargs()).add_(self.bias[:, None])


class FoldedDownsample(nn.Module):
    """Conv(1x3x3, s2) + BN per frame and Conv1d(k3, s2) + BN, each one convolution with a bias."""

    def __init__(self, downsample: nn.Module) -> None:
        super().__init__()
        (video_conv, video_norm), (audio_conv, audio_norm) = downsample.video, downsample.audio
        video_w, video_b = conv_then_affine(video_conv.weight[:, :, 0], None, *batch_norm_affine(video_norm))
        audio_w, audio_b = conv_then_affine(audio_conv.weight, None, *batch_norm_affine(audio_norm))
        self.video_weight, self.video_bias = _frozen(video_w), _frozen(video_b)
        self.audio_weight, self.audio_bias = _frozen(audio_w), _frozen(audio_b)

    def forward(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        video = F.conv2d(video, self.video_weight, self.video_bias, stride=2, padding=1)
        return video, F.conv1d(audio, self.audio_weight, self.audio_bias, stride=2, padding=1)


class FoldedVPM(_Folded):
    """VPM + the BN after it on (B*T, C, H, W): pre-norms in the 1x1 convolutions, layer scales in the outputs."""

    def __init__(self, vpm: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.fuse, self.unfuse = _frozen(vpm.fuse.weight), _frozen(vpm.unfuse.weight)
        in_w, in_b = affine_then_pointwise(*batch_norm_affine(vpm.norm1), vpm.proj_in.weight, vpm.proj_in.bias)
        out_w, out_b = conv_then_affine(vpm.proj_out.weight[:, :, 0, 0], vpm.proj_out.bias, vpm.scale1.scale,
                                        torch.zeros_like(vpm.scale1.scale))
        self.in_w, self.in_b, self.out_w = _frozen(in_w), _frozen(in_b), _frozen(out_w)
        lka = vpm.attention
        self.lka = nn.ParameterList(
            _frozen(t) for t in (lka.dw5.weight, lka.dw5.bias, lka.dw7.weight, lka.dw7.bias, lka.pw.weight, lka.pw.bias)
        )
        mlp = vpm.mlp
        expand_w, expand_b = affine_then_pointwise(*batch_norm_affine(vpm.norm2), mlp.expand.weight, mlp.expand.bias)
        project_w, project_b = conv_then_affine(mlp.project.weight[:, :, 0, 0], mlp.project.bias, vpm.scale2.scale,
                                                torch.zeros_like(vpm.scale2.scale))
        # proj_out's bias rides through the MLP: with x' = x + W z (no bias), x' + b + mlp(x' + b) is
        # x' + mlp'(x') where mlp' reads b through its expansion (no padding there) and adds b at its end
        expand_b = (expand_b.double() + expand_w.double() @ out_b.double()).to(expand_b.dtype)
        project_b = (project_b.double() + out_b.double()).to(project_b.dtype)
        self.mlp = nn.ParameterList(
            _frozen(t) for t in (expand_w, expand_b, mlp.dw.weight, mlp.dw.bias, project_w, project_b)
        )
        scale, shift = batch_norm_affine(norm)
        self.norm_scale, self.norm_shift = _frozen(scale.to(in_w.dtype)), _frozen(shift.to(in_w.dtype))

    def forward(self, x: Tensor, frames: int) -> Tensor:
        x = mix_frames(self.fuse, x, frames)
        # proj_out's bias is in the MLP's (see __init__)
        attention = backends.optional_module_op("large_kernel_attention_residual", self, x.device)
        if attention is not None:  # the C++ path: both 1x1 convolutions and the residual inside one kernel
            x = attention(x, self.in_w, self.in_b, *_tensors(self.lka), self.out_w)
        else:
            p = torch.relu_(pointwise(x, self.in_w, self.in_b))
            context = self.op("large_kernel_attention", x.device)(p, *_tensors(self.lka))
            x = pointwise(context, self.out_w, residual=x)
        x = self.op("conv_mlp", x.device)(x, *_tensors(self.mlp)).add_(x)
        x = mix_frames(self.unfuse, x, frames)
        return torch.addcmul(_channels(self.norm_shift, 4), x, _channels(self.norm_scale, 4))


class FoldedSAAVM(_Folded):
    """SAAVM + the two BNs after it: squeeze convolutions with their BN folded, scatter-back convolutions with
    the layer scale and the following BN folded (plus the BN's scale of the residual)."""

    def __init__(self, saavm: nn.Module, video_norm: nn.Module, audio_norm: nn.Module) -> None:
        super().__init__()
        self.frames, self.window = saavm.frames, saavm.window
        dw, dw_norm, _, to_one = saavm.video_squeeze
        dw_w, dw_b = conv_then_affine(dw.weight[:, :, 0], dw.bias, *batch_norm_affine(dw_norm))
        conv3, conv3_norm, _, audio_to_one = saavm.audio_squeeze
        conv3_w, conv3_b = conv_then_affine(conv3.weight, conv3.bias, *batch_norm_affine(conv3_norm))
        self.video_squeeze = nn.ParameterList(_frozen(t) for t in (dw_w, dw_b, to_one.weight.flatten(1), to_one.bias))
        self.audio_squeeze = nn.ParameterList(_frozen(t) for t in (conv3_w, conv3_b, audio_to_one.weight,
                                                                   audio_to_one.bias))
        self.attention = nn.ParameterList(
            _frozen(t) for t in (saavm.pos, saavm.norm.weight, saavm.norm.bias, saavm.mix.weight, saavm.mix.bias)
        )
        self.video_expand = nn.ParameterList(self._expand(saavm.video_expand, saavm.video_scale.scale, video_norm))
        self.audio_expand = nn.ParameterList(self._expand(saavm.audio_expand, saavm.audio_scale.scale, audio_norm))

    @staticmethod
    def _expand(conv: nn.Module, layer_scale: Tensor, norm: nn.Module) -> list[nn.Parameter]:
        """[weight, bias, residual scale] of norm(x + layer_scale * conv(map)) = scale x + conv'(map)."""
        scale, shift = batch_norm_affine(norm)
        weight = conv.weight[:, :, 0] if conv.weight.dim() == 5 else conv.weight
        weight, bias = conv_then_affine(weight, conv.bias, scale * layer_scale.double(), shift)
        return [_frozen(weight), _frozen(bias), _frozen(scale.to(weight.dtype))]

    def tokens(self, video: Tensor, audio: Tensor) -> Tensor:
        """(B, T * windows + T, window**2) from video (B*T, C, H, W) and audio (B, C, L)."""
        squeeze_video = self.op("video_squeeze_tokens", video.device)
        squeeze_audio = self.op("audio_squeeze_tokens", audio.device)
        video_tokens = squeeze_video(video, *_tensors(self.video_squeeze), self.frames, self.window)
        audio_tokens = squeeze_audio(audio, *_tensors(self.audio_squeeze), self.frames, self.window * self.window)
        return torch.cat([video_tokens, audio_tokens], dim=1)

    def forward(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.tokens(video, audio)
        attention = _tensors(self.attention)
        pos = attention[0]
        if tokens.shape[1] != pos.shape[0]:
            raise InputShapeError(
                f"SAAVM was built for {pos.shape[0]} tokens but a {video.shape[-2]}x{video.shape[-1]} map with "
                f"{self.frames} frames makes {tokens.shape[1]}; build it with num_tokens for this input size"
            )
        mixed = self.op("joint_token_attention", tokens.device)(tokens, *attention)
        expand_video = self.op("video_expand_residual", video.device)
        expand_audio = self.op("audio_expand_residual", audio.device)
        video = expand_video(video, mixed[:, : -self.frames], *_tensors(self.video_expand), self.window)
        audio = expand_audio(audio, mixed[:, -self.frames :], *_tensors(self.audio_expand))
        return video, audio


class FoldedBlock(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.vpm = FoldedVPM(block.vpm, block.vpm_norm)
        self.saavm = FoldedSAAVM(block.saavm, block.video_norm, block.audio_norm)

    def forward(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        return self.saavm(self.vpm(video, self.saavm.frames), audio)


class FoldedStage(nn.Module):
    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.downsample = None if stage.downsample is None else FoldedDownsample(stage.downsample)
        self.blocks = nn.ModuleList(FoldedBlock(block) for block in stage.blocks)

    def forward(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        if self.downsample is not None:
            video, audio = self.downsample(video, audio)
        for block in self.blocks:
            video, audio = block(video, audio)
        return video, audio


class FoldedClassifier(nn.Module):
    """Pooled features and the three heads; each pooling conv + global mean computed from edge sums."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.video_weight, self.video_bias = _frozen(classifier.video_pool.weight[:, 0]), _frozen(
            classifier.video_pool.bias)
        self.audio_weight, self.audio_bias = _frozen(classifier.audio_pool.weight[:, 0]), _frozen(
            classifier.audio_pool.bias)
        self.visual_head = _frozen(classifier.visual_head.weight)
        self.audio_head = _frozen(classifier.audio_head.weight)
        self.clip_head = _frozen(classifier.clip_head.weight)

    def features(self, video: Tensor, audio: Tensor, frames: int) -> tuple[Tensor, Tensor]:
        """f_v (B, C) from video (B*T, C, H, W) and f_a (B, C) from audio (B, C, L)."""
        batch, channels, height, width = audio.shape[0], video.shape[1], video.shape[2], video.shape[3]
        clips = video.reshape(batch, frames, channels, height, width)
        kernel = self.video_weight.shape[-1]
        # each tap_sums moves its axis last: (B, T, C, H, W) -> (B, C, taps x, taps y, taps t)
        sums = tap_sums(tap_sums(tap_sums(clips, 4, kernel), 3, kernel), 1, kernel)
        sums = sums.permute(0, 1, 4, 3, 2)  # taps as (t, y, x), the weight's order
        f_v = self.video_bias + torch.einsum("bctyx,ctyx->bc", sums, self.video_weight) / (frames * height * width)
        audio_sums = tap_sums(audio, 2, self.audio_weight.shape[-1])
        f_a = self.audio_bias + torch.einsum("bck,ck->bc", audio_sums, self.audio_weight) / audio.shape[-1]
        return f_v, f_a

    def forward(self, video: Tensor, audio: Tensor, frames: int) -> tuple[Tensor, Tensor, Tensor]:
        f_v, f_a = self.features(video, audio, frames)
        clip = F.linear(torch.cat([f_v, f_a], dim=1), self.clip_head)
        return F.linear(f_v, self.visual_head), F.linear(f_a, self.audio_head), clip


class FoldedNet(nn.Module):
    """An eval-mode SingleStreamNet with its normalisations folded into its convolutions (see the module
    docstring). forward(video (B, T, 3, H, W) in [0, 1], audio (B, S)) -> ModelOutput (clip, visual, audio)."""

    def __init__(self, model: SingleStreamNet) -> None:
        super().__init__()
        self.config = model.config
        self.video_stem = FoldedVideoStem(model)
        self.audio_stem = FoldedAudioStem(model)
        self.stages = nn.ModuleList(FoldedStage(stage) for stage in model.stages)
        self.classifier = FoldedClassifier(model.classifier)
        self.backend = model.backend
        self.eval()

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        """Set the backend of every folded module that calls a fused op."""
        self._backend = backends.check_name(name)
        if name != "auto":
            backends.unavailable_reason(name)
        for module in self.modules():
            if isinstance(module, _Folded):
                module.backend = name

    def forward(self, video: Tensor, audio: Tensor) -> ModelOutput:
        if self.training:
            raise InferenceOnlyError(
                "a FoldedNet computes the eval-mode model only (batch norm folded into weights): call .eval(), or "
                "train the SingleStreamNet it was folded from"
            )
        check_model_inputs(video, audio, self.config)
        batch, frames = video.shape[:2]
        x = self.video_stem(video.reshape(batch * frames, *video.shape[2:]))
        a = self.audio_stem(audio)
        for stage in self.stages:
            x, a = stage(x, a)
        visual, audio_logits, clip = self.classifier(x, a, frames)
        return ModelOutput(clip=clip, visual=visual, audio=audio_logits)

    @torch.no_grad()
    def predict_proba(self, video: Tensor, audio: Tensor) -> FakeProbabilities:
        """Fake probabilities (B,) from each head."""
        return self(video, audio).probabilities()


def fold_for_inference(model: SingleStreamNet) -> FoldedNet:
    """A FoldedNet computing ``model`` in eval mode (its running statistics), on the model's device and dtype.

    The model is not changed; later changes to it do not reach the folded copy (fold again after training).
    """
    if not isinstance(model, SingleStreamNet):
        raise TypeError(f"fold_for_inference takes a SingleStreamNet, got {type(model).__name__}")
    with torch.no_grad():
        return FoldedNet(model)


def inference_model(model: SingleStreamNet, fold: bool | None = None) -> nn.Module:
    """What ``avfused detect`` and ``avfused eval`` run: by default (``fold=None``) the folded copy of ``model``
    where its weights are on the CPU (the measured fast path there) and the model itself elsewhere (the GPU
    kernels and autocast are checked on the unfolded one); ``fold=True`` / ``False`` forces either."""
    if fold is None:
        fold = next(model.parameters()).device.type == "cpu"
    return fold_for_inference(model) if fold else model
