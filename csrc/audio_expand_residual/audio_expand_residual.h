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
//   grad_tokens = the interpolation's transpose of grad_signal.
// CPU (audio_expand_residual_cpu.cpp) and CUDA (audio_expand_residual_cuda.cu, _cuda_host.cpp) halves; the
// CUDA kernels read float32, float16 or bfloat16 audio, tokens and grad (one type per call) and compute in
// float32, weights and weight gradients float32. Both halves place the interpolation with
// interpolation_source below.
#pragma once

#include <cstdint>

#ifndef AVFUSED_HOST_DEVICE  // a function both halves compile: host and device under nvcc
#ifdef __CUDACC__
#define AVFUSED_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define AVFUSED_HOST_DEVICE inline
#endif
#endif

namespace avfused {

// The interpolation's source of output i: out[i] = (1 - lambda) tokens[left] + lambda tokens[right].
struct InterpolationSource {
  int64_t left, right;
  float lambda;
};

// Where torch's upsample_linear1d with align_corners=False reads output i (ratio = values / length), the
// source position in double: in float its rounding (1e-7 of up to T D) would shift the weights by ~1e-5 at
// long lengths. On the GPU the product is rounded on its own (no fused multiply-add), as on the CPU.
AVFUSED_HOST_DEVICE InterpolationSource interpolation_source(double ratio, int64_t values, int64_t i) {
#ifdef __CUDA_ARCH__
  const double shifted = __dmul_rn(ratio, static_cast<double>(i) + 0.5) - 0.5;
#else
  const double shifted = ratio * (static_cast<double>(i) + 0.5) - 0.5;
#endif
  const double source = shifted < 0.0 ? 0.0 : shifted;
  const int64_t left = static_cast<int64_t>(source);
  return {left, left + (left < values - 1 ? 1 : 0), static_cast<float>(source - static_cast<double>(left))};
}

}  // namespace avfused

#ifdef CUDART_VERSION  // the CUDA launchers (audio_expand_residual_cuda.cu): plain pointers and a stream
#include "../common/cuda_activations.h"

namespace avfused::cuda {

struct AudioExpandShape {
  long long clips;
  int channels, length, values, kernel;  // C, L, T D, K
};

// Dynamic shared memory per block of the forward and backward kernels (the larger), for K taps.
size_t audio_expand_residual_shared_bytes(int kernel);

// float32 values of the backward's workspace (per-block partial sums and signal gradients).
long long audio_expand_residual_backward_workspace(AudioExpandShape shape, DeviceLimits limits);

// out (B, C, L) in the activations' type; tokens (B, T D) of that type too.
cudaError_t launch_audio_expand_residual_forward(ActivationType type, const void* audio, const void* tokens,
                                                 const float* weight, const float* bias, const float* scale, void* out,
                                                 AudioExpandShape shape, DeviceLimits limits, cudaStream_t stream);

// grad_audio and grad_tokens are written in the activations' type, the float32 grad_weight (C, K), grad_bias
// and grad_scale (C,) overwritten; workspace holds audio_expand_residual_backward_workspace floats.
cudaError_t launch_audio_expand_residual_backward(ActivationType type, const void* grad, const void* audio,
                                                  const void* tokens, const float* weight, const float* scale,
                                                  void* grad_audio, void* grad_tokens, float* grad_weight,
                                                  float* grad_bias, float* grad_scale, float* workspace,
                                                  AudioExpandShape shape, DeviceLimits limits, cudaStream_t stream);

}  // namespace avfused::cuda
#endif

#ifndef __CUDACC__  // the ATen half: the shape checks both halves share
#include <ATen/ATen.h>

namespace avfused {

// A valid call's shapes (audio (B, C, L) and tokens (B, T, D) non-empty, weight (C, 1, K) with K odd, bias and
// scale (C,)); the device and dtype rules are each half's own.
inline void check_audio_expand_shapes(const char* op, const at::Tensor& audio, const at::Tensor& tokens,
                                      const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale) {
  TORCH_CHECK(audio.dim() == 3 && audio.numel() > 0, "avfused_ext.", op, ": audio must be a non-empty (B, C, L), "
              "got shape ", audio.sizes());
  TORCH_CHECK(tokens.dim() == 3 && tokens.numel() > 0 && weight.dim() == 3, "avfused_ext.", op, ": tokens must be "
              "a non-empty (B, T, D) and weight (C, 1, K), got ", tokens.sizes(), " and ", weight.sizes());
  const int64_t clips = audio.size(0), channels = audio.size(1), kernel = weight.size(2);
  TORCH_CHECK(tokens.size(0) == clips, "avfused_ext.", op, ": tokens must be (", clips, ", T, D) like audio, got ",
              tokens.sizes());
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({channels, 1, kernel}), "avfused_ext.", op, ": weight must be (",
              channels, ", 1, K), got ", weight.sizes());
  TORCH_CHECK(bias.sizes() == at::IntArrayRef({channels}) && scale.sizes() == at::IntArrayRef({channels}),
              "avfused_ext.", op, ": bias and scale must be (", channels, "), got ", bias.sizes(), " and ",
              scale.sizes());
  TORCH_CHECK(kernel % 2 == 1, "avfused_ext.", op, ": the kernel size must be odd, got ", kernel);
}

}  // namespace avfused
#endif  // __CUDACC__
