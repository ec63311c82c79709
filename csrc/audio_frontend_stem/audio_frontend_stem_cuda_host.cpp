// CUDA host side of audio_frontend_stem: checks, allocation, the launch (audio_frontend_stem_cuda.cu) and
// the mean-removal term; the backward is the device-generic composite of audio_frontend_stem.h.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "../common/cuda_checks.h"
#include "audio_frontend_stem.h"

namespace avfused {
namespace {

std::tuple<at::Tensor, at::Tensor> audio_frontend_stem_cuda(const at::Tensor& x, const at::Tensor& filters,
                                                            const at::Tensor& stem_weight, double log_eps) {
  const AudioFrontendStemInputs in =
      check_audio_frontend_stem_inputs(x, filters, stem_weight, c10::DeviceType::CUDA);
  TORCH_CHECK(in.batch <= 65535, "avfused_ext.audio_frontend_stem: at most 65535 clips per call on CUDA, got ",
              in.batch);
  check_int_range(in.samples, "samples", "audio_frontend_stem");
  check_int_range(in.filters_count * in.taps, "filters * taps", "audio_frontend_stem");
  const c10::cuda::CUDAGuard guard(in.x.device());
  const int64_t tiles = (in.outputs + kCudaFrontendOutTile - 1) / kCudaFrontendOutTile;
  at::Tensor acc = at::empty({in.batch, in.channels, in.outputs}, in.x.options());
  at::Tensor tile_sums = at::empty({in.batch, tiles, in.filters_count}, in.x.options());
  check_launch(cuda::launch_audio_frontend_stem_forward(
                   in.x.data_ptr<float>(), in.filters.data_ptr<float>(), in.stem_weight.data_ptr<float>(),
                   acc.data_ptr<float>(), tile_sums.data_ptr<float>(), static_cast<int>(in.batch),
                   static_cast<int>(in.samples), static_cast<int>(in.filters_count), static_cast<int>(in.taps),
                   static_cast<int>(in.channels), static_cast<int>(in.outputs), static_cast<int>(tiles),
                   static_cast<float>(log_eps), c10::cuda::getCurrentCUDAStream()),
               "audio_frontend_stem");
  at::Tensor band_mean = tile_sums.sum(1, /*keepdim=*/false, at::kDouble).div_(in.samples).to(at::kFloat);
  at::Tensor out = acc.sub_(stem_of_band_means(band_mean, in.stem_weight, in.samples, in.outputs));
  return {out, band_mean};
}

void elementwise_backward_cuda(at::Tensor& y, at::Tensor& grad_bands, const at::Tensor& grad_band_mean,
                               const at::Tensor& band_mean, double log_eps) {
  TORCH_CHECK(y.is_contiguous() && grad_bands.is_contiguous(), "avfused_ext: internal buffers must be contiguous");
  const at::Tensor gm = grad_band_mean.contiguous(), bm = band_mean.contiguous();
  check_launch(cuda::launch_audio_frontend_stem_elementwise_backward(
                   y.data_ptr<float>(), grad_bands.data_ptr<float>(), gm.data_ptr<float>(), bm.data_ptr<float>(),
                   y.numel(), y.size(2), static_cast<float>(log_eps), c10::cuda::getCurrentCUDAStream()),
               "audio_frontend_stem_backward");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> audio_frontend_stem_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& filters, const at::Tensor& stem_weight,
    const at::Tensor& band_mean, double log_eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  return audio_frontend_stem_backward_composite(grad_out, x, filters, stem_weight, band_mean, log_eps,
                                                c10::DeviceType::CUDA, elementwise_backward_cuda);
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("audio_frontend_stem", &avfused::audio_frontend_stem_cuda);
  m.impl("audio_frontend_stem_backward", &avfused::audio_frontend_stem_backward_cuda);
}
