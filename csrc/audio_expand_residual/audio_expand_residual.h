// audio_expand_residual: the SAAVM's way back for audio, with the batch norm after it folded
// (avfused/reference.py's audio_expand_residual; the Python side is avfused/ops/audio_expand_residual.py).
//
// Ops (schemas in audio_expand_residual_cpu.cpp):
//   audio_expand_residual(audio (B,C,L), tokens (B,T,D), weight (C,1,K), bias (C,), scale (C,)) -> (B,C,L)
//   signal = the T D token values linearly interpolated to L (torch's interpolate, align_corners=False)
//   out[c] = scale[c] audio[c] + bias[c] + conv1d(signal, weight[c])   ('same' zero padding, K odd)
//   audio_expand_residual_backward(grad (B,C,L), audio, tokens, weight, bias, scale)
//     -> (grad_audio, grad_tokens, grad_weight, grad_bias, grad_scale)
//   grad_audio[c] = scale[c] grad[c],  grad_scale[c] = sum grad[c] audio[c],  grad_bias[c] = sum grad[c],
//   grad_weight[c] = grad[c] (x) signal (a correlation),  grad_signal = sum_c conv1d^T(grad[c], weight[c]),
//   grad_tokens = the interpolation's transpose of grad_signal. CPU only.
#pragma once
