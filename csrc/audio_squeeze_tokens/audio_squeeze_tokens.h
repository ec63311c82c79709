// audio_squeeze_tokens: the SAAVM's audio squeeze straight into tokens (avfused/reference.py's
// audio_squeeze_tokens; the Python side is avfused/ops/audio_squeeze_tokens.py).
//
// Ops (schemas in audio_squeeze_tokens_cpu.cpp):
//   audio_squeeze_tokens(audio (B,C,L), weight (C,C,K1), bias (C,), to_one (1,C,K2), to_one_bias (1,),
//                        int frames T, int token_dim D) -> (B, T, D)
//   hidden = ReLU(conv1d(audio, weight) + bias),  signal = conv1d(hidden, to_one) + to_one_bias  ('same' zeros)
//   token value j of the T D: the mean of signal over [floor(j L / (T D)), ceil((j + 1) L / (T D)))
//   audio_squeeze_tokens_backward(grad (B,T,D), audio, weight, bias, to_one, to_one_bias, frames, token_dim)
//     -> (grad_audio, grad_weight, grad_bias, grad_to_one, grad_to_one_bias)
// K1, K2 odd. CPU (audio_squeeze_tokens_cpu.cpp) and CUDA (audio_squeeze_tokens_cuda.cu, _cuda_host.cpp) halves;
// neither writes the (B, C, L) hidden layer: both recompute it tile by tile. The CUDA kernels read float32,
// float16 or bfloat16 audio and grad (tokens and grad_audio in that type) and compute in float32; weights and
// weight gradients are float32.
#pragma once

#include <cstdint>

namespace avfused::audio_squeeze_tokens {

constexpr int64_t kTile = 512;  // signal positions per CPU work unit (the hidden layer's halo is K2 - 1 more)

}  // namespace avfused::audio_squeeze_tokens

#ifdef CUDART_VERSION  // the CUDA launchers (audio_squeeze_tokens_cuda.cu): plain pointers and a stream
#include "../common/cuda_dense_conv1d.h"

namespace avfused::cuda {

// The forward's workspace (floats: partial signals of channel slices) and shared memory per block.
LaunchNeeds audio_squeeze_tokens_forward_needs(long long clips, int channels, int length, int k2, DeviceLimits limits);

// tokens (B, T D) in `type` are written; audio (B, C, L) in `type`, weight (C, C, K1), bias (C,), to_one (C, K2)
// and to_one_bias (1,) float32.
cudaError_t launch_audio_squeeze_tokens_forward(ActivationType type, const void* audio, const float* weight,
                                                const float* bias, const float* to_one, const float* to_one_bias,
                                                void* tokens, float* workspace, long long clips, int channels,
                                                int length, int k1, int k2, int outputs, DeviceLimits limits,
                                                cudaStream_t stream);

// The backward's workspace (floats: the weight-sum blocks' partials) and shared memory per block (shared_bytes
// past limits.shared_bytes_per_block: the launch cannot run).
LaunchNeeds audio_squeeze_tokens_backward_needs(long long clips, int channels, int length, int k1, int k2,
                                                DeviceLimits limits);

// grad (B, T D) in `type`; grad_audio (B, C, L) in `type` and the float32 grad_weight (C, C, K1), grad_bias (C,),
// grad_to_one (C, K2) and grad_to_one_bias (1,) are written (no zeroing).
cudaError_t launch_audio_squeeze_tokens_backward(ActivationType type, const void* grad, const void* audio,
                                                 const float* weight, const float* bias, const float* to_one,
                                                 void* grad_audio, float* grad_weight, float* grad_bias,
                                                 float* grad_to_one, float* grad_to_one_bias, float* workspace,
                                                 long long clips, int channels, int length, int k1, int k2,
                                                 int outputs, DeviceLimits limits, cudaStream_t stream);

}  // namespace avfused::cuda
#endif
