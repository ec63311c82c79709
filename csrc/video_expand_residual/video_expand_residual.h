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
//   grad_tokens = grad_map cut back into tokens (zero over the padding).
// CPU (video_expand_residual_cpu.cpp) and CUDA (video_expand_residual_cuda.cu, _cuda_host.cpp) halves; the
// CUDA kernels read float32, float16 or bfloat16 video, tokens and grad (one type per call) and compute in
// float32, weights and weight gradients float32.
#pragma once

#ifdef CUDART_VERSION  // the CUDA launchers (video_expand_residual_cuda.cu): plain pointers and a stream
#include "../common/cuda_activations.h"

namespace avfused::cuda {

// out (N, C, H, W) in the activations' type; tokens (N / T, T R Q, window^2) of that type too.
cudaError_t launch_video_expand_residual_forward(ActivationType type, const void* video, const void* tokens,
                                                 const float* weight, const float* bias, const float* scale, void* out,
                                                 long long images, int frames, int channels, int height, int width,
                                                 int window, DeviceLimits limits, cudaStream_t stream);

// grad_video and grad_tokens are written in the activations' type; the float32 sums grad_weight (C, 9),
// grad_bias and grad_scale (C,) are added to (zero them first).
cudaError_t launch_video_expand_residual_backward(ActivationType type, const void* grad, const void* video,
                                                  const void* tokens, const float* weight, const float* scale,
                                                  void* grad_video, void* grad_tokens, float* grad_weight,
                                                  float* grad_bias, float* grad_scale, long long images, int frames,
                                                  int channels, int height, int width, int window,
                                                  DeviceLimits limits, cudaStream_t stream);

}  // namespace avfused::cuda
#endif
