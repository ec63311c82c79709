// video_squeeze_tokens: the SAAVM's video squeeze straight into tokens (avfused/reference.py's
// video_squeeze_tokens; the Python side is avfused/ops/video_squeeze_tokens.py).
//
// Ops (schemas in video_squeeze_tokens_cpu.cpp):
//   video_squeeze_tokens(video (N,C,H,W), dw_weight (C,1,3,3), dw_bias (C,), weight (1,C), bias (1,),
//                        int frames T, int window) -> (N / T, T R Q, window^2),  R = ceil(H / window),
//                        Q = ceil(W / window)
//   video_squeeze_tokens_backward(grad_tokens, video, dw_weight, dw_bias, weight, bias, frames, window)
//                        -> (d_video, d_dw_weight, d_dw_bias, d_weight, d_bias)
//
//   z_c = dw3x3_c(video_c) + dw_bias[c]   ('same' zero padding),  map = bias + sum_c weight[c] ReLU(z_c)
//   token r Q + q of image n holds map[r window + i][q window + j] at i window + j (zero past the map)
// Images n = b T + t of clip b: image n's R Q tokens follow one another from token n R Q on.
// Backward: d_map = the token gradients put back on the map, d_bias = sum d_map, d_weight[c] = <d_map,
// ReLU(z_c)>, dz_c = weight[c] d_map [z_c > 0], d_dw_bias = sum dz, d_dw_weight = dz (x) video (a
// correlation), d_video = dw3x3^T(dz). Both passes keep only the inputs and recompute z one channel plane
// of one image at a time (CPU) or per pixel (CUDA): the (N, C, H, W) hidden layer never reaches memory.
#pragma once

#ifdef CUDART_VERSION  // the CUDA launchers (video_squeeze_tokens_cuda.cu): plain pointers and a stream
#include "../common/cuda_activations.h"

namespace avfused::cuda {

// tokens (N / T, T R Q, window^2) in video's type: the pixels' slots are written (zero the padding first);
// weights float32 (dw (C, 9), dw_bias, weight (C,), bias (1,)).
cudaError_t launch_video_squeeze_tokens_forward(ActivationType type, const void* video, const float* dw,
                                                const float* dw_bias, const float* weight, const float* bias, void* tokens,
                                                long long images, int channels, int height, int width, int window,
                                                cudaStream_t stream);

// grad_video (N, C, H, W) in video's type is written; the float32 gradients d_dw .. d_bias are added to
// (zero them first).
cudaError_t launch_video_squeeze_tokens_backward(ActivationType type, const void* grad_tokens, const void* video,
                                                 const float* dw, const float* dw_bias, const float* weight,
                                                 void* grad_video, float* d_dw, float* d_dw_bias, float* d_weight,
                                                 float* d_bias, long long images, int channels, int height, int width,
                                                 int window, cudaStream_t stream);

}  // namespace avfused::cuda
#endif
