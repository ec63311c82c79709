// CUDA host side of audio_squeeze_tokens: checks, allocation, the launches (audio_squeeze_tokens_cuda.cu). Audio,
// tokens, grad and grad_audio share one activation type (float32, float16 or bfloat16); the weights and their
// gradients are float32. The kernels add nothing with atomics: workspace holds their partial results.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <tuple>

#include "../common/cuda_checks.h"
#include "audio_squeeze_tokens.h"

namespace avfused {
namespace {

struct TokensCudaInputs {
  at::Tensor audio, weight, bias, to_one, to_one_bias;
  cuda::ActivationType type;
  int64_t clips, channels, length, k1, k2, outputs;
};

TokensCudaInputs check_cuda_inputs(const char* op, const at::Tensor& audio, const at::Tensor& weight,
                                   const at::Tensor& bias, const at::Tensor& to_one, const at::Tensor& to_one_bias,
                                   int64_t frames, int64_t token_dim) {
  TORCH_CHECK(audio.dim() == 3 && audio.numel() > 0, "avfused_ext.", op, ": audio must be a non-empty (B, C, L), "
              "got shape ", audio.sizes());
  TORCH_CHECK(audio.is_cuda(), "avfused_ext.", op, ": expected CUDA tensors, got audio on ", audio.device());
  TORCH_CHECK(weight.dim() == 3 && to_one.dim() == 3, "avfused_ext.", op, ": weight must be (C, C, K1) and to_one "
              "(1, C, K2), got ", weight.sizes(), " and ", to_one.sizes());
  const int64_t clips = audio.size(0), channels = audio.size(1), length = audio.size(2);
  const int64_t k1 = weight.size(2), k2 = to_one.size(2);
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({channels, channels, k1}), "avfused_ext.", op, ": weight must be (",
              channels, ", ", channels, ", K1), got ", weight.sizes());
  TORCH_CHECK(bias.sizes() == at::IntArrayRef({channels}), "avfused_ext.", op, ": bias must be (", channels, "), got ",
              bias.sizes());
  TORCH_CHECK(to_one.sizes() == at::IntArrayRef({1, channels, k2}), "avfused_ext.", op, ": to_one must be (1, ",
              channels, ", K2), got ", to_one.sizes());
  TORCH_CHECK(to_one_bias.sizes() == at::IntArrayRef({1}), "avfused_ext.", op, ": to_one_bias must be (1), got ",
              to_one_bias.sizes());
  TORCH_CHECK(k1 % 2 == 1 && k2 % 2 == 1, "avfused_ext.", op, ": kernel sizes must be odd, got ", k1, " and ", k2);
  TORCH_CHECK(frames > 0 && token_dim > 0, "avfused_ext.", op, ": frames and token_dim must be positive, got ", frames,
              " and ", token_dim);
  check_int_range(length, "length", op);
  check_int_range(channels * channels * k1, "C * C * K1", op);
  check_int_range(channels * k2, "C * K2", op);
  check_int_range(clips * frames * token_dim, "clips * frames * token_dim", op);
  const at::Device device = audio.device();
  return {audio.contiguous(),
          cuda_weight(op, "weight", weight, device),
          cuda_weight(op, "bias", bias, device),
          cuda_weight(op, "to_one", to_one, device),
          cuda_weight(op, "to_one_bias", to_one_bias, device),
          activation_type(op, "audio", audio),
          clips,
          channels,
          length,
          k1,
          k2,
          frames * token_dim};
}

// The launch cannot run on this device when one of its kernels needs more shared memory than a block has.
void check_shared_bytes(const cuda::LaunchNeeds& needs, const cuda::DeviceLimits& limits, const TokensCudaInputs& in,
                        const char* op) {
  TORCH_CHECK(needs.shared_bytes <= limits.shared_bytes_per_block, "avfused_ext.", op, ": ", in.channels,
              " channels and kernels of ", in.k1, " and ", in.k2, " taps need ", needs.shared_bytes,
              " bytes of shared memory per block; this GPU has ", limits.shared_bytes_per_block,
              " (use fewer channels or taps, or the torch backend)");
}

at::Tensor audio_squeeze_tokens_cuda(const at::Tensor& audio, const at::Tensor& weight, const at::Tensor& bias,
                                     const at::Tensor& to_one, const at::Tensor& to_one_bias, int64_t frames,
                                     int64_t token_dim) {
  const char* op = "audio_squeeze_tokens";
  const c10::cuda::CUDAGuard guard(audio.device());
  const TokensCudaInputs in = check_cuda_inputs(op, audio, weight, bias, to_one, to_one_bias, frames, token_dim);
  const int channels = static_cast<int>(in.channels), length = static_cast<int>(in.length);
  const cuda::DeviceLimits limits = current_device_limits();
  const cuda::LaunchNeeds needs =
      cuda::audio_squeeze_tokens_forward_needs(in.clips, channels, length, static_cast<int>(in.k2), limits);
  check_shared_bytes(needs, limits, in, op);
  at::Tensor tokens = at::empty({in.clips, frames, token_dim}, in.audio.options());
  at::Tensor signals = at::empty({needs.workspace}, in.weight.options());
  check_launch(cuda::launch_audio_squeeze_tokens_forward(
                   in.type, in.audio.data_ptr(), in.weight.data_ptr<float>(), in.bias.data_ptr<float>(),
                   in.to_one.data_ptr<float>(), in.to_one_bias.data_ptr<float>(), tokens.data_ptr(),
                   signals.data_ptr<float>(), in.clips, channels, length, static_cast<int>(in.k1),
                   static_cast<int>(in.k2), static_cast<int>(in.outputs), limits, c10::cuda::getCurrentCUDAStream()),
               op);
  return tokens;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> audio_squeeze_tokens_backward_cuda(
    const at::Tensor& grad, const at::Tensor& audio, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& to_one, const at::Tensor& to_one_bias, int64_t frames, int64_t token_dim) {
  const char* op = "audio_squeeze_tokens_backward";
  const c10::cuda::CUDAGuard guard(audio.device());
  const TokensCudaInputs in = check_cuda_inputs(op, audio, weight, bias, to_one, to_one_bias, frames, token_dim);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({in.clips, frames, token_dim}) &&
                  grad.scalar_type() == in.audio.scalar_type() && grad.device() == in.audio.device(),
              "avfused_ext.", op, ": grad must be (", in.clips, ", ", frames, ", ", token_dim, ") ",
              in.audio.scalar_type(), " on ", in.audio.device(), ", got ", grad.sizes(), " ", grad.scalar_type(),
              " on ", grad.device());
  const at::Tensor grad_c = grad.contiguous();
  const int channels = static_cast<int>(in.channels), length = static_cast<int>(in.length);
  const int k1 = static_cast<int>(in.k1), k2 = static_cast<int>(in.k2);
  const cuda::DeviceLimits limits = current_device_limits();
  const cuda::LaunchNeeds needs = cuda::audio_squeeze_tokens_backward_needs(in.clips, channels, length, k1, k2, limits);
  check_shared_bytes(needs, limits, in, op);
  const at::TensorOptions weights = in.weight.options();
  const int64_t c = in.channels;
  at::Tensor grad_audio = at::empty_like(in.audio);
  at::Tensor grad_weight = at::empty({c, c, in.k1}, weights), grad_bias = at::empty({c}, weights);
  at::Tensor grad_to_one = at::empty({1, c, in.k2}, weights), grad_to_one_bias = at::empty({1}, weights);
  at::Tensor partials = at::empty({needs.workspace}, weights);
  check_launch(cuda::launch_audio_squeeze_tokens_backward(
                   in.type, grad_c.data_ptr(), in.audio.data_ptr(), in.weight.data_ptr<float>(),
                   in.bias.data_ptr<float>(), in.to_one.data_ptr<float>(), grad_audio.data_ptr(),
                   grad_weight.data_ptr<float>(), grad_bias.data_ptr<float>(), grad_to_one.data_ptr<float>(),
                   grad_to_one_bias.data_ptr<float>(), partials.data_ptr<float>(), in.clips, channels, length, k1, k2,
                   static_cast<int>(in.outputs), limits, c10::cuda::getCurrentCUDAStream()),
               op);
  return {grad_audio, grad_weight, grad_bias, grad_to_one, grad_to_one_bias};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("audio_squeeze_tokens", &avfused::audio_squeeze_tokens_cuda);
  m.impl("audio_squeeze_tokens_backward", &avfused::audio_squeeze_tokens_backward_cuda);
}
