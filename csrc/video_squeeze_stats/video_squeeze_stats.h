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
// recompute z one channel plane of one image at a time (CPU) or per pixel (CUDA): no (N, C, H, W) tensor
// besides d_video.
#pragma once

#ifdef CUDART_VERSION  // the CUDA launchers (video_squeeze_stats_cuda.cu): plain pointers and a stream
#include "../common/cuda_activations.h"

namespace avfused::cuda {

// mean, var (C,) float32; video in `type`, weights float32; plane_stats holds 2 N C doubles (workspace).
cudaError_t launch_video_squeeze_stats_forward(ActivationType type, const void* video, const float* dw,
                                               const float* dw_bias, double* plane_stats, float* mean, float* var,
                                               long long images, int channels, int height, int width,
                                               cudaStream_t stream);

// grad_video (N, C, H, W) in `type` is written; the float32 d_dw (C, 9), d_dw_bias (C,) are added to (zero
// them first).
cudaError_t launch_video_squeeze_stats_backward(ActivationType type, const float* grad_mean, const float* grad_var,
                                                const void* video, const float* dw, const float* dw_bias,
                                                const float* mean, void* grad_video, float* d_dw, float* d_dw_bias,
                                                long long images, int channels, int height, int width,
                                                cudaStream_t stream);

}  // namespace avfused::cuda
#endif
