// video_squeeze_stats: the batch statistics of the SAAVM's video squeeze conv, for training-mode batch norm
// (avfused/reference.py's video_squeeze_stats; the Python side is avfused/ops/video_squeeze_stats.py).
//
// Ops (schemas in video_squeeze_stats_cpu.cpp):
//   video_squeeze_stats(video (N,C,H,W), dw_weight (C,1,3,3), dw_bias (C,)) -> (mean (C,), var (C,))
//   video_squeeze_stats_backward(grad_mean (C,), grad_var (C,), video, dw_weight, dw_bias, mean (C,))
//                                -> (d_video, d_dw_weight, d_dw_bias)
//
//   z_c = dw3x3_c(video_c) + dw_bias[c]   ('same' zero padding),  M = N H W
//   mean[c] = sum z_c / M,  var[c] = sum (z_c - mean[c])^2 / M   (biased, as batch norm normalises)
// Backward: dz_c = grad_mean[c] / M + 2 grad_var[c] (z_c - mean[c]) / M (the mean's own share in var
// sums to zero), then d_dw_bias = sum dz, d_dw_weight = dz (x) video, d_video = dw3x3^T(dz). Both passes
// recompute z one channel plane of one image at a time: no (N, C, H, W) tensor besides d_video.
#pragma once
