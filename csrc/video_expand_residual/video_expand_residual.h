// video_expand_residual: the SAAVM's way back for video, with the batch norm after it folded
// (avfused/reference.py's video_expand_residual; the Python side is avfused/ops/video_expand_residual.py).
//
// Op (schema in video_expand_residual_cpu.cpp):
//   video_expand_residual(video (N,C,H,W), tokens (B, T R Q, window^2), weight (C,1,3,3), bias (C,),
//                         scale (C,), int window) -> (N,C,H,W),   T = N / B
//   map = image n's tokens laid back as an H x W map (the inverse of video_squeeze_tokens' cut)
//   out[c] = scale[c] video[c] + bias[c] + conv3x3(map, weight[c])   ('same' zero padding)
// CPU forward only; its autograd (avfused/ops/video_expand_residual.py) recomputes through the reference.
#pragma once
