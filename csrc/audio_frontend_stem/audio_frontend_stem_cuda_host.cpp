// CUDA host side of audio_frontend_stem: checks, allocation, the launches (audio_frontend_stem_cuda.cu) and
// the mean-removal terms; the set-up shared with the CPU is in audio_frontend_stem.h.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "../common/cuda_checks.h"
#include "audio_frontend_stem.h"

namespace avfused {
namespace {

cuda::FrontendArgs device_args(const AudioFrontendStemInputs& in, double log_eps, double exact_below) {
  TORCH_CHECK(in.batch <= 65535, "avfused_ext.audio_frontend_stem: at most 65535 clips per call on CUDA, got ",
              in.batch);
  check_int_range(in.samples, "samples", "audio_frontend_stem");
  check_int_range(in.filters_count * in.taps, "filters * taps", "audio_frontend_stem");
  check_int_range(in.channels * in.filters_count * kStemKernel, "channels * filters * 7", "audio_frontend_stem");
  return cuda::FrontendArgs{in.x.data_ptr<float>(),
                            in.x64.data_ptr<double>(),
                            in.filters.data_ptr<float>(),
                            in.filters64.data_ptr<double>(),
                            in.filter_norms.data_ptr<float>(),
                            in.stem_weight.data_ptr<float>(),
                            static_cast<int>(in.batch),
                            static_cast<int>(in.samples),
                            static_cast<int>(in.filters_count),
                            static_cast<int>(in.taps),
                            static_cast<int>(in.channels),
                            static_cast<int>(in.outputs),
                            static_cast<float>(log_eps),
                            static_cast<float>(exact_below),
                            in.symmetric};
}

std::tuple<at::Tensor, at::Tensor> audio_frontend_stem_cuda(const at::Tensor& x, const at::Tensor& filters,
                                                            const at::Tensor& stem_weight, double log_eps,
                                                            double exact_below, bool linear_phase,
                                                            c10::string_view formulation) {
  TORCH_CHECK(formulation == "auto" || formulation == "direct", "avfused_ext.audio_frontend_stem: on CUDA the ",
              "formulation is 'direct' (or 'auto'), got '", formulation, "'");
  const c10::cuda::CUDAGuard guard(x.device());
  const AudioFrontendStemInputs in = check_audio_frontend_stem_inputs(x, filters, stem_weight, linear_phase,
                                                                      exact_below, c10::DeviceType::CUDA);
  const cuda::FrontendArgs args = device_args(in, log_eps, exact_below);
  const int64_t tiles = (in.outputs + kCudaFrontendOutTile - 1) / kCudaFrontendOutTile;
  at::Tensor acc = at::empty({in.batch, in.channels, in.outputs}, in.x.options());
  at::Tensor tile_sums = at::empty({in.batch, tiles, in.filters_count}, in.x.options());
  check_launch(cuda::launch_audio_frontend_stem_forward(args, acc.data_ptr<float>(), tile_sums.data_ptr<float>(),
                                                        static_cast<int>(tiles), c10::cuda::getCurrentCUDAStream()),
               "audio_frontend_stem");
  at::Tensor band_mean = tile_sums.sum(1, /*keepdim=*/false, at::kDouble).div_(in.samples).to(at::kFloat);
  at::Tensor out = acc.sub_(stem_of_band_means(band_mean, in.stem_weight, in.samples, in.outputs));
  return {out, band_mean};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> audio_frontend_stem_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& filters, const at::Tensor& stem_weight,
    const at::Tensor& band_mean_in, double log_eps, double exact_below, bool linear_phase,
    std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard guard(x.device());
  const AudioFrontendStemInputs in = check_audio_frontend_stem_inputs(x, filters, stem_weight, linear_phase,
                                                                      exact_below, c10::DeviceType::CUDA);
  const at::Tensor grad = check_audio_frontend_stem_backward(in, grad_out, band_mean_in);
  const cuda::FrontendArgs args = device_args(in, log_eps, exact_below);
  const at::TensorOptions f64 = in.x.options().dtype(at::kDouble);
  at::Tensor dx, dh, dw;
  if (output_mask[0]) dx = at::zeros({in.batch, in.samples}, f64);
  if (output_mask[1]) dh = at::zeros({in.filters_count, in.taps}, f64);
  if (output_mask[2]) dw = at::zeros({in.channels, in.filters_count, kStemKernel}, f64);
  if (output_mask[0] || output_mask[1] || output_mask[2]) {
    int device = 0, limit = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    const size_t bytes = cuda::audio_frontend_stem_backward_shared_bytes(
        static_cast<int>(in.taps), static_cast<int>(in.channels), linear_phase, exact_below > 0, output_mask[0]);
    TORCH_CHECK(bytes <= static_cast<size_t>(limit), "avfused_ext.audio_frontend_stem_backward: ", in.taps,
                " taps and ", in.channels, " channels need ", bytes, " bytes of shared memory per block; this GPU has ",
                limit);
    const at::Tensor band_mean = band_mean_in.to(at::kFloat).contiguous();
    const at::Tensor grad_mean = mean_band_gradient(grad, in.stem_weight, in.samples).contiguous();
    check_launch(cuda::launch_audio_frontend_stem_backward(
                     args, grad.data_ptr<float>(), band_mean.data_ptr<float>(), grad_mean.data_ptr<float>(),
                     dx.defined() ? dx.data_ptr<double>() : nullptr, dh.defined() ? dh.data_ptr<double>() : nullptr,
                     dw.defined() ? dw.data_ptr<double>() : nullptr, linear_phase, c10::cuda::getCurrentCUDAStream()),
                 "audio_frontend_stem_backward");
  }
  return finish_audio_frontend_stem_backward(in, dx, dh, dw, linear_phase);
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("audio_frontend_stem", &avfused::audio_frontend_stem_cuda);
  m.impl("audio_frontend_stem_backward", &avfused::audio_frontend_stem_backward_cuda);
}
