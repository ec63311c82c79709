"""The pure-PyTorch reference of every hot op: the fallback backend, the test oracle, the benchmark baseline.

Every fused backend (``avfused.kernels`` in Triton, ``csrc/`` in C++/CUDA) computes exactly these
functions, forward and backward. Shapes (B batch, S samples, F filters, K taps, C channels,
N = batch*frames images, H x W pixels, L tokens, D = 49 token values):

    sinc_filterbank(low_hz (F,), band_hz (F,))                   -> (F, K)
    audio_frontend(wave (B, S), low_hz, band_hz)                 -> (B, F, S)
    audio_frontend_stem(wave (B, S), low_hz, band_hz, w (C, F, 7)) -> (B, C, ceil(S / 4))
    large_kernel_attention(p (N, C, H, W), w5, b5, w7, b7, w1, b1) -> (N, C, H, W)
    large_kernel_attention_residual(x (N, C, H, W), w_in, b_in, w5, b5, w7, b7, w1, b1, w_out) -> (N, C, H, W)
    conv_mlp(x (N, C, H, W), w_in, b_in, w_dw, b_dw, w_out, b_out)  -> (N, C, H, W)
    joint_token_attention(tokens (B, L, D), pos (L, D), ln_w, ln_b, lin_w, lin_b) -> (B, L, D)
    video_stem(frames (N, I, H, W), w (C, I, K, K), b (C,), border (I,)) -> (N, C, ceil(H/4), ceil(W/4))
    video_squeeze_tokens(video (N, C, H, W), w_dw (C, 1, 3, 3), b_dw, w (1, C), b (1,), T, window) -> (B, L_v, D)
    video_squeeze_stats(video (N, C, H, W), w_dw (C, 1, 3, 3), b_dw (C,))  -> (mean (C,), var (C,))
    audio_squeeze_tokens(audio (B, C, L), w (C, C, K1), b, w_one (1, C, K2), b_one (1,), T, D) -> (B, T, D)
    audio_squeeze_stats(audio (B, C, L), w (C, C, K), b (C,))  -> (mean (C,), var (C,))
    video_expand_residual(video (N, C, H, W), tokens (B, L_v, D), w (C, 1, 3, 3), b, scale, window) -> (N, C, H, W)
    audio_expand_residual(audio (B, C, L), tokens (B, T, D), w (C, 1, K), b, scale) -> (B, C, L)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

STEM_KERNEL = 7
STEM_STRIDE = 4


# ---------------------------------------------------------------------------------------------
# audio front end
# ---------------------------------------------------------------------------------------------
def sinc_filterbank(
    low_hz: Tensor,
    band_hz: Tensor,
    kernel_size: int = 251,
    sample_rate: int = 16000,
    min_low_hz: float = 50.0,
    min_band_hz: float = 50.0,
) -> Tensor:
    """Windowed band-pass sinc filters (F, K) from learnable cut-offs (SincNet's parameterisation).

    low = min_low + |low_hz|; high = clamp(low + min_band + |band_hz|, min_low, sr/2).
    h(t) = (sin(2 pi high t) - sin(2 pi low t)) / (pi t), h(0) = 2 (high - low); Hamming window;
    divided by 2 (high - low) so the centre tap is 1 (SincNet's normalisation: pass-band gain
    sample_rate / (2 band); the log and mean removal that follow make that gain immaterial).
    """
    low = min_low_hz + low_hz.abs()
    high = torch.clamp(low + min_band_hz + band_hz.abs(), min_low_hz, sample_rate / 2)
    band = (high - low)[:, None]
    half = (kernel_size - 1) // 2
    n = torch.arange(-half, half + 1, device=low_hz.device, dtype=low_hz.dtype)
    t = n / sample_rate
    window = 0.54 - 0.46 * torch.cos(2 * math.pi * (n + half) / (kernel_size - 1))
    t_safe = torch.where(n == 0, torch.ones_like(t), t)
    sides = (torch.sin(2 * math.pi * high[:, None] * t_safe) - torch.sin(2 * math.pi * low[:, None] * t_safe)) / (
        math.pi * t_safe
    )
    response = torch.where(n == 0, 2 * band, sides)
    return response * window / (2 * band)


def preemphasis_and_norm(wave: Tensor, coefficient: float = 0.97, eps: float = 1e-5) -> Tensor:
    """y[t] = x[t] - c x[t-1] (y[0] = x[0]), then zero mean and unit variance over time per clip."""
    emphasized = torch.cat([wave[:, :1], wave[:, 1:] - coefficient * wave[:, :-1]], dim=1)
    mean = emphasized.mean(dim=1, keepdim=True)
    var = emphasized.var(dim=1, unbiased=False, keepdim=True)
    return (emphasized - mean) / torch.sqrt(var + eps)


def audio_frontend(
    wave: Tensor,
    low_hz: Tensor,
    band_hz: Tensor,
    kernel_size: int = 251,
    sample_rate: int = 16000,
    min_low_hz: float = 50.0,
    min_band_hz: float = 50.0,
    preemphasis: float = 0.97,
    log_eps: float = 1e-6,
) -> Tensor:
    """Waveform (B, S) -> log band energies (B, F, S), zero mean over time per filter."""
    x = preemphasis_and_norm(wave, preemphasis)
    filters = sinc_filterbank(low_hz, band_hz, kernel_size, sample_rate, min_low_hz, min_band_hz)
    y = F.conv1d(x[:, None, :], filters[:, None, :], padding=kernel_size // 2)
    y = torch.log(y.abs() + log_eps)
    return y - y.mean(dim=2, keepdim=True)


def audio_frontend_stem(
    wave: Tensor,
    low_hz: Tensor,
    band_hz: Tensor,
    stem_weight: Tensor,
    kernel_size: int = 251,
    sample_rate: int = 16000,
    min_low_hz: float = 50.0,
    min_band_hz: float = 50.0,
    preemphasis: float = 0.97,
    log_eps: float = 1e-6,
) -> Tensor:
    """The front end followed by the audio stem's Conv1d(F -> C, k7, s4, pad 3, no bias): (B, C, ceil(S/4)).

    This is the unit the fused kernels replace, so that the (B, F, S) intermediate is never stored.
    """
    bands = audio_frontend(
        wave, low_hz, band_hz, kernel_size, sample_rate, min_low_hz, min_band_hz, preemphasis, log_eps
    )
    return F.conv1d(bands, stem_weight, stride=STEM_STRIDE, padding=STEM_KERNEL // 2)


# ---------------------------------------------------------------------------------------------
# VPM
# ---------------------------------------------------------------------------------------------
def large_kernel_attention(p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    """Gate p by its large-kernel context: p * (W1 @ dw7x7_dil3(dw5x5(p)) + b1).

    w5 (C, 1, 5, 5), w7 (C, 1, 7, 7), w1 (C, C) or (C, C, 1, 1); biases (C,). 'same' zero padding.
    """
    channels = p.shape[1]
    context = F.conv2d(p, w5, b5, padding=2, groups=channels)
    context = F.conv2d(context, w7, b7, padding=9, dilation=3, groups=channels)
    context = F.conv2d(context, w1.reshape(channels, channels, 1, 1), b1)
    return p * context


def large_kernel_attention_residual(x: Tensor, w_in: Tensor, b_in: Tensor, w5: Tensor, b5: Tensor, w7: Tensor,
                                    b7: Tensor, w1: Tensor, b1: Tensor, w_out: Tensor) -> Tensor:
    """The folded VPM's attention branch with its residual: x + w_out @ large_kernel_attention(ReLU(w_in @ x + b_in)).

    w_in, w1, w_out (C, C) or (C, C, 1, 1); w5 (C, 1, 5, 5) or (C, 25), w7 (C, 1, 7, 7) or (C, 49); biases (C,).
    """
    channels = x.shape[1]
    p = F.relu(F.conv2d(x, w_in.reshape(channels, channels, 1, 1), b_in))
    attention = large_kernel_attention(p, w5.reshape(channels, 1, 5, 5), b5, w7.reshape(channels, 1, 7, 7), b7, w1, b1)
    return x + F.conv2d(attention, w_out.reshape(channels, channels, 1, 1))


def conv_mlp(x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """1x1 expand (C -> E) -> depthwise 3x3 -> ReLU -> 1x1 project (E -> C).

    w_in (E, C) or (E, C, 1, 1), w_dw (E, 1, 3, 3), w_out (C, E) or (C, E, 1, 1); biases (E,), (E,), (C,).
    """
    expanded_channels, channels = w_in.shape[0], w_in.shape[1]
    hidden = F.conv2d(x, w_in.reshape(expanded_channels, channels, 1, 1), b_in)
    hidden = F.relu(F.conv2d(hidden, w_dw, b_dw, padding=1, groups=expanded_channels))
    return F.conv2d(hidden, w_out.reshape(channels, expanded_channels, 1, 1), b_out)


# ---------------------------------------------------------------------------------------------
# SAAVM
# ---------------------------------------------------------------------------------------------
def joint_token_attention(
    tokens: Tensor,
    pos: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    lin_weight: Tensor,
    lin_bias: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    """z = tokens + pos; out = z + Linear(softmax(u u^T / sqrt(D)) u) with u = LayerNorm(z); q = k = v = u."""
    z = tokens + pos
    u = F.layer_norm(z, (z.shape[-1],), ln_weight, ln_bias, eps)
    scores = u @ u.transpose(-1, -2) / math.sqrt(z.shape[-1])
    mixed = torch.softmax(scores, dim=-1) @ u
    return z + F.linear(mixed, lin_weight, lin_bias)


def video_to_tokens(maps: Tensor, window: int) -> Tensor:
    """One-channel video maps (B, T, H, W) -> tokens (B, T * ceil(H/w) * ceil(W/w), w*w), zero-padded."""
    batch, frames, height, width = maps.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    maps = F.pad(maps, (0, pad_w, 0, pad_h))
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    tokens = maps.reshape(batch, frames, rows, window, cols, window).permute(0, 1, 2, 4, 3, 5)
    return tokens.reshape(batch, frames * rows * cols, window * window)


def tokens_to_video(tokens: Tensor, frames: int, height: int, width: int, window: int) -> Tensor:
    """Inverse of video_to_tokens: (B, L, w*w) -> (B, T, H, W), padding cropped."""
    batch = tokens.shape[0]
    rows, cols = -(-height // window), -(-width // window)
    maps = tokens.reshape(batch, frames, rows, cols, window, window).permute(0, 1, 2, 4, 3, 5)
    maps = maps.reshape(batch, frames, rows * window, cols * window)
    return maps[:, :, :height, :width]


def audio_to_tokens(signal: Tensor, frames: int, token_dim: int) -> Tensor:
    """One-channel audio map (B, L) -> (B, T, D): average-pooled to T*D values, one token per frame.

    Under torch.export / ONNX export / jit tracing this runs ``adaptive_average_pool_by_gather``, which gives
    the same values bit for bit and exports to every format (the ONNX TorchScript exporter refuses
    adaptive_avg_pool1d when T*D does not divide L); eagerly it runs adaptive_avg_pool1d, 3-10x faster.
    """
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        pooled = adaptive_average_pool_by_gather(signal, frames * token_dim)
    else:
        pooled = F.adaptive_avg_pool1d(signal[:, None, :], frames * token_dim)
    return pooled.reshape(signal.shape[0], frames, token_dim)


def adaptive_average_pool_by_gather(signal: Tensor, size: int) -> Tensor:
    """F.adaptive_avg_pool1d(signal[:, None], size)[:, 0] for signal (B, L) -> (B, size), from gathers and adds.

    Bin i averages signal[floor(i L / size) : ceil((i + 1) L / size)], as adaptive pooling does. The bins'
    values are added one position at a time, left to right (positions past a bin's end add a zero), in
    float32 for half types, and divided by the bin's width: the very operations, in the same order, of
    PyTorch's CPU kernel, so the result is identical, not merely close.
    """
    length = signal.shape[-1]
    i = torch.arange(size, device=signal.device)
    start = (i * length) // size
    end = ((i + 1) * length + size - 1) // size
    widest = -(-length // size) + 1  # no bin spans more than ceil(L / size) + 1 positions
    compute = torch.float32 if signal.dtype in (torch.float16, torch.bfloat16) else signal.dtype
    padded = F.pad(signal.to(compute), (0, 1))  # position L holds the zero that pads short bins
    total = padded[:, start]
    for offset in range(1, widest):
        position = start + offset
        total = total + padded[:, torch.where(position < end, position, length)]
    return (total / (end - start).to(compute)).to(signal.dtype)


def tokens_to_audio(tokens: Tensor, length: int) -> Tensor:
    """(B, T, D) -> (B, length), linear interpolation of the concatenated tokens."""
    flat = tokens.reshape(tokens.shape[0], 1, -1)
    return F.interpolate(flat, size=length, mode="linear", align_corners=False)[:, 0]


# ---------------------------------------------------------------------------------------------
# inference-time fusions (avfused.inference)
# ---------------------------------------------------------------------------------------------
def video_stem(frames: Tensor, weight: Tensor, bias: Tensor, border: Tensor) -> Tensor:
    """Conv2d(I -> C, K x K, stride 2) + bias -> ReLU -> MaxPool(3 x 3, stride 2, padding 1), per image.

    The convolution's K // 2 rows and columns of padding hold ``border`` (I,), one value per input
    channel, not zero: the folded video stem takes raw pixels and pads them with the normalisation mean,
    which normalises to the zero the unfolded stem pads with (avfused.fold.normalisation_into_conv).
    """
    images, channels, height, width = frames.shape
    pad = weight.shape[-1] // 2
    padded = border.to(frames.dtype).reshape(1, channels, 1, 1).expand(images, channels, height + 2 * pad,
                                                                      width + 2 * pad).clone()
    padded[:, :, pad : pad + height, pad : pad + width] = frames
    features = F.relu(F.conv2d(padded, weight, bias, stride=2))
    return F.max_pool2d(features, 3, stride=2, padding=1)


def video_squeeze_tokens(
    video: Tensor, dw_weight: Tensor, dw_bias: Tensor, weight: Tensor, bias: Tensor, frames: int, window: int
) -> Tensor:
    """The SAAVM's video squeeze straight into tokens: ReLU(dw3x3(video) + dw_bias) -> 1x1 to one channel
    (weight (1, C), bias (1,)) -> window x window tokens. video (B*T, C, H, W) -> (B, T * windows, window**2)."""
    channels = video.shape[1]
    hidden = F.relu(F.conv2d(video, dw_weight, dw_bias, padding=dw_weight.shape[-1] // 2, groups=channels))
    maps = F.conv2d(hidden, weight.reshape(1, channels, 1, 1), bias)
    return video_to_tokens(maps.reshape(-1, frames, maps.shape[-2], maps.shape[-1]), window)


def video_squeeze_stats(video: Tensor, dw_weight: Tensor, dw_bias: Tensor) -> tuple[Tensor, Tensor]:
    """Training-mode batch-norm statistics of the SAAVM's video squeeze conv: the per-channel mean and biased
    variance of dw3x3(video) + dw_bias over (N, H, W). video (N, C, H, W) -> (mean (C,), var (C,))."""
    hidden = F.conv2d(video, dw_weight, dw_bias, padding=dw_weight.shape[-1] // 2, groups=video.shape[1])
    var, mean = torch.var_mean(hidden, dim=(0, 2, 3), correction=0)
    return mean, var


def audio_squeeze_tokens(
    audio: Tensor, weight: Tensor, bias: Tensor, to_one: Tensor, to_one_bias: Tensor, frames: int, token_dim: int
) -> Tensor:
    """The SAAVM's audio squeeze straight into tokens: ReLU(Conv1d(C -> C, K1)(audio) + bias) ->
    Conv1d(C -> 1, K2) (to_one (1, C, K2), to_one_bias (1,)), 'same' zero padding -> T tokens of token_dim.
    audio (B, C, L) -> (B, T, token_dim)."""
    hidden = F.relu(F.conv1d(audio, weight, bias, padding=weight.shape[-1] // 2))
    signal = F.conv1d(hidden, to_one, to_one_bias, padding=to_one.shape[-1] // 2)
    return audio_to_tokens(signal[:, 0], frames, token_dim)


def audio_squeeze_stats(audio: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """The batch statistics the SAAVM's audio batch norm takes in training: the per-channel mean and biased
    variance over (B, L) of z = Conv1d(C -> C, K, 'same')(audio) + bias. audio (B, C, L), weight (C, C, K),
    bias (C,) -> (mean (C,), var (C,))."""
    z = F.conv1d(audio, weight, bias, padding=weight.shape[-1] // 2)
    var, mean = torch.var_mean(z, dim=(0, 2), unbiased=False)
    return mean, var


def video_expand_residual(
    video: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor, scale: Tensor, window: int
) -> Tensor:
    """The SAAVM's way back for video with the norm after it folded: scale * video + bias +
    Conv2d(1 -> C, 3x3, 'same')(the tokens as maps). video (B*T, C, H, W), tokens (B, T * windows,
    window**2), weight (C, 1, 3, 3), bias and scale (C,) -> (B*T, C, H, W)."""
    images, _, height, width = video.shape
    maps = tokens_to_video(tokens, images // tokens.shape[0], height, width, window).reshape(images, 1, height, width)
    return F.conv2d(maps, weight, bias, padding=weight.shape[-1] // 2) + scale.reshape(1, -1, 1, 1) * video


def audio_expand_residual(audio: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    """The SAAVM's way back for audio with the norm after it folded: scale * audio + bias +
    Conv1d(1 -> C, K, 'same')(the tokens interpolated to L). audio (B, C, L), tokens (B, T, D),
    weight (C, 1, K), bias and scale (C,) -> (B, C, L)."""
    signal = tokens_to_audio(tokens, audio.shape[-1])
    return F.conv1d(signal[:, None], weight, bias, padding=weight.shape[-1] // 2) + scale[:, None] * audio
