// video_expand_residual: the SAAVM's way back for video, with the batch norm after it folded
// (avfused/reference.py's video_expand_residual; the Python side is avfused/ops/video_expand_residual.py).
//
// Ops (schemas in video_expand_residual_cpu.cpp):
//   video_expand_residual(video (N,C,H,W), tokens (B, T R Q, window^2), weight (C,1,3,3), bias (C,),
//                         scale (C,), int window) -> (N,C,H,W),   T = N / B
//   map = image n's tokens laid back as an H x W map (the inverse of video_squeeze_tokens' cut)
//   out[c] = scale[c] video[c] + bias[c] + conv3x3(map, weight[c])   ('same' zero padding)
//   video_expand_residual_backward(grad (N,C,H,W), video, tokens, weight, bias, scale, int window)
//     -> (grad_video, grad_tokens, grad_weight, grad_bias, grad_scale)
//   grad_video[c] = scale[c] grad[c],  grad_scale[c] = sum grad[c] video[c],  grad_bias[c] = sum grad[c],
//   grad_weight[c] = grad[c] (x) map (a correlation),  grad_map = sum_c conv3x3^T(grad[c], weight[c]),
//   grad_tokens = grad_map cut back into tokens (zero over the padding). CPU only.
#pragma once
