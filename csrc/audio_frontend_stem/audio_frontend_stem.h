// audio_frontend_stem: the fused audio front end + audio stem (avfused/reference.py's audio_frontend_stem
// with x already pre-emphasised and normalised and the sinc filters built; the Python side is
// avfused/ops/audio_frontend_stem.py). Shared by the CPU (audio_frontend_stem_cpu.cpp) and CUDA
// (audio_frontend_stem_cuda.cu, audio_frontend_stem_cuda_host.cpp) halves.
//
// Ops (schemas in audio_frontend_stem_cpu.cpp):
//   audio_frontend_stem(x (B,S), filters (F,K), stem_weight (C,F,7), log_eps) -> (out (B,C,ceil(S/4)), band_mean (B,F))
//   audio_frontend_stem_backward(grad_out, x, filters, stem_weight, band_mean, log_eps)
//       -> (grad_x, grad_filters, grad_stem_weight)
//
// Forward math:
//   y[b,f,t]  = sum_k h[f,k] x[b, t + k - K/2]            (zero padded, stride 1)
//   a[b,f,t]  = log(|y| + eps),  m[b,f] = mean_t a[b,f,t]
//   out[b,c,o] = sum_{f,j} w[c,f,j] (a - m)[b, f, 4 o + j - 3]   (zero padded)
//             = stem(a)[b,c,o] - sum_j M[b,c,j] [0 <= 4 o + j - 3 < S],  M[b,c,j] = sum_f m[b,f] w[c,f,j]
// The backward recomputes y with ATen convolutions around one fused elementwise kernel per device.
#pragma once

#include <cstdint>

namespace avfused {

constexpr int64_t kStemKernel = 7;
constexpr int64_t kStemStride = 4;
constexpr int64_t kStemPad = 3;
constexpr int kCudaFrontendOutTile = 63;  // stem outputs per CUDA block: 4 * 63 + 3 = 255 band positions

#ifdef CUDART_VERSION  // the CUDA launchers (audio_frontend_stem_cuda.cu): plain pointers and a stream
namespace cuda {
// acc (B, C, O): stem of the log band energies; tile_sums (B, tiles, F): per-tile sums of the energies.
cudaError_t launch_audio_frontend_stem_forward(const float* x, const float* filters, const float* weight, float* acc,
                                               float* tile_sums, int batch, int samples, int filter_count, int taps,
                                               int channels, int outputs, int tiles, float log_eps,
                                               cudaStream_t stream);

// In place over (rows, samples): grad <- (grad - grad_mean[row]) * sign(y) / (|y| + eps),
// y <- log(|y| + eps) - band_mean[row].
cudaError_t launch_audio_frontend_stem_elementwise_backward(float* y, float* grad, const float* grad_mean,
                                                            const float* band_mean, int64_t total, int64_t samples,
                                                            float log_eps, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace avfused

#ifndef __CUDACC__  // the ATen half: input checks and the device-generic backward
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace avfused {

// Validated, contiguous float32 inputs and their sizes.
struct AudioFrontendStemInputs {
  at::Tensor x, filters, stem_weight;
  int64_t batch, samples, filters_count, taps, channels, outputs;
};

// The elementwise step of the backward, run in place by each device:
// grad_bands <- (grad_bands - mean) * sign(y) / (|y| + eps), y <- log(|y| + eps) - band_mean.
using FrontendElementwiseFn = void (*)(at::Tensor& y, at::Tensor& grad_bands, const at::Tensor& grad_band_mean,
                                       const at::Tensor& band_mean, double log_eps);
inline AudioFrontendStemInputs check_audio_frontend_stem_inputs(const at::Tensor& x, const at::Tensor& filters,
                                                     const at::Tensor& stem_weight, c10::DeviceType device) {
  TORCH_CHECK(x.dim() == 2, "avfused_ext.audio_frontend_stem: x must be (batch, samples), got shape ", x.sizes());
  TORCH_CHECK(filters.dim() == 2, "avfused_ext.audio_frontend_stem: filters must be (filters, taps), got shape ",
              filters.sizes());
  TORCH_CHECK(stem_weight.dim() == 3 && stem_weight.size(2) == kStemKernel,
              "avfused_ext.audio_frontend_stem: stem_weight must be (channels, filters, 7), got shape ",
              stem_weight.sizes());
  TORCH_CHECK(stem_weight.size(1) == filters.size(0), "avfused_ext.audio_frontend_stem: stem_weight has ",
              stem_weight.size(1), " input channels but there are ", filters.size(0), " filters");
  TORCH_CHECK(filters.size(1) % 2 == 1, "avfused_ext.audio_frontend_stem: the filter length must be odd, got ",
              filters.size(1));
  TORCH_CHECK(x.size(0) > 0 && x.size(1) > 0 && filters.size(0) > 0 && stem_weight.size(0) > 0,
              "avfused_ext.audio_frontend_stem: empty input: x ", x.sizes(), ", filters ", filters.sizes(),
              ", stem_weight ", stem_weight.sizes());
  for (const at::Tensor* t : {&x, &filters, &stem_weight}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "avfused_ext.audio_frontend_stem: expected float32 tensors, got ",
                t->scalar_type());
    TORCH_CHECK(t->device().type() == device, "avfused_ext.audio_frontend_stem: expected ", c10::DeviceTypeName(device),
                " tensors, got one on ", t->device());
    TORCH_CHECK(t->device() == x.device(), "avfused_ext.audio_frontend_stem: all tensors must be on one device, got ",
                x.device(), " and ", t->device());
  }
  AudioFrontendStemInputs in;
  in.x = x.contiguous();
  in.filters = filters.contiguous();
  in.stem_weight = stem_weight.contiguous();
  in.batch = x.size(0);
  in.samples = x.size(1);
  in.filters_count = filters.size(0);
  in.taps = filters.size(1);
  in.channels = stem_weight.size(0);
  in.outputs = (in.samples + kStemStride - 1) / kStemStride;
  return in;
}

// 1 where stem tap j of output o lands inside [0, S): (O, 7).
inline at::Tensor stem_tap_inside(int64_t samples, int64_t outputs, const at::TensorOptions& options) {
  at::Tensor position = at::arange(outputs, options.dtype(at::kLong)).mul_(kStemStride).unsqueeze(1) +
                        at::arange(kStemKernel, options.dtype(at::kLong)).sub_(kStemPad).unsqueeze(0);
  return position.ge(0).logical_and_(position.lt(samples)).to(options.dtype());
}

inline at::Tensor stem_of_band_means(const at::Tensor& band_mean, const at::Tensor& stem_weight, int64_t samples,
                                     int64_t outputs) {
  // M[b, c, j] = sum_f m[b, f] w[c, f, j]
  const at::Tensor m = at::einsum("bf,cfj->bcj", {band_mean, stem_weight});
  return at::matmul(m, stem_tap_inside(samples, outputs, band_mean.options()).t());  // (B, C, O)
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> audio_frontend_stem_backward_composite(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& filters_in, const at::Tensor& weight_in,
    const at::Tensor& band_mean, double log_eps, c10::DeviceType device, FrontendElementwiseFn elementwise) {
  const AudioFrontendStemInputs in = check_audio_frontend_stem_inputs(x_in, filters_in, weight_in, device);
  const std::vector<int64_t> out_shape{in.batch, in.channels, in.outputs};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape), "avfused_ext.audio_frontend_stem_backward: grad_out must be ", out_shape,
              ", got ", grad_out.sizes());
  TORCH_CHECK(band_mean.sizes() == at::IntArrayRef({in.batch, in.filters_count}),
              "avfused_ext.audio_frontend_stem_backward: band_mean must be (batch, filters), got ", band_mean.sizes());
  const at::Tensor g = grad_out.to(at::kFloat).contiguous();
  const at::Tensor x = in.x.unsqueeze(1);            // (B, 1, S)
  const at::Tensor h = in.filters.unsqueeze(1);      // (F, 1, K)
  const int64_t half = in.taps / 2;
  at::Tensor y = at::conv1d(x, h, {}, 1, half).contiguous();  // recomputed band responses (B, F, S)
  // gradient reaching the (a - m) bands: the stem transposed; output_padding restores length S
  const int64_t extra = in.samples - (kStemStride * (in.outputs - 1) - 2 * kStemPad + kStemKernel);
  at::Tensor grad_bands =
      at::conv_transpose1d(g, in.stem_weight, {}, kStemStride, kStemPad, extra).contiguous();  // (B, F, S)
  const at::Tensor grad_mean = grad_bands.mean(2);   // mean removal passes on G - mean_t G
  elementwise(y, grad_bands, grad_mean, band_mean.to(at::kFloat).contiguous(), log_eps);
  // now y = a - m (the stem's input) and grad_bands = dL/dy
  const auto stem_grads = at::convolution_backward(g, y, in.stem_weight, c10::nullopt, {kStemStride}, {kStemPad},
                                                   {1}, false, {0}, 1, {false, true, false});
  const auto conv_grads =
      at::convolution_backward(grad_bands, x, h, c10::nullopt, {1}, {half}, {1}, false, {0}, 1, {true, true, false});
  return {std::get<0>(conv_grads).squeeze(1), std::get<1>(conv_grads).squeeze(1), std::get<1>(stem_grads)};
}

}  // namespace avfused
#endif  // __CUDACC__
