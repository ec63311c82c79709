// audio_expand_residual: the SAAVM's way back for audio, with the batch norm after it folded
// (avfused/reference.py's audio_expand_residual; the Python side is avfused/ops/audio_expand_residual.py).
//
// Op (schema in audio_expand_residual_cpu.cpp):
//   audio_expand_residual(audio (B,C,L), tokens (B,T,D), weight (C,1,K), bias (C,), scale (C,)) -> (B,C,L)
//   signal = the T D token values linearly interpolated to L (torch's interpolate, align_corners=False)
//   out[c] = scale[c] audio[c] + bias[c] + conv1d(signal, weight[c])   ('same' zero padding, K odd)
// CPU forward only; its autograd (avfused/ops/audio_expand_residual.py) recomputes through the reference.
#pragma once
