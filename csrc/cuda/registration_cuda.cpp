// CUDA kernels of the avfused_ext operators, and the Python module avfused._C_cuda whose import
// registers them. The schemas come from avfused._C_cpu (csrc/registration.cpp), loaded first.
#include <Python.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "../avfused_ops.h"
#include "../frontend_stem_common.h"
#include "../token_attention_common.h"
#include "launchers.h"

namespace avfused {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "avfused_ext.", what, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

void check_int_range(int64_t value, const char* what, const char* op) {
  TORCH_CHECK(value <= std::numeric_limits<int>::max(), "avfused_ext.", op, ": ", what, " = ", value,
              " is too large for the CUDA kernel");
}

std::tuple<at::Tensor, at::Tensor> frontend_stem_cuda(const at::Tensor& x, const at::Tensor& filters,
                                                      const at::Tensor& stem_weight, double log_eps) {
  const FrontendStemInputs in = check_frontend_stem_inputs(x, filters, stem_weight, c10::DeviceType::CUDA);
  TORCH_CHECK(in.batch <= 65535, "avfused_ext.frontend_stem: at most 65535 clips per call on CUDA, got ", in.batch);
  check_int_range(in.samples, "samples", "frontend_stem");
  check_int_range(in.filters_count * in.taps, "filters * taps", "frontend_stem");
  const c10::cuda::CUDAGuard guard(in.x.device());
  const int64_t tiles = (in.outputs + cuda::kFrontendOutTile - 1) / cuda::kFrontendOutTile;
  at::Tensor acc = at::empty({in.batch, in.channels, in.outputs}, in.x.options());
  at::Tensor tile_sums = at::empty({in.batch, tiles, in.filters_count}, in.x.options());
  check_launch(cuda::launch_frontend_stem_forward(
                   in.x.data_ptr<float>(), in.filters.data_ptr<float>(), in.stem_weight.data_ptr<float>(),
                   acc.data_ptr<float>(), tile_sums.data_ptr<float>(), static_cast<int>(in.batch),
                   static_cast<int>(in.samples), static_cast<int>(in.filters_count), static_cast<int>(in.taps),
                   static_cast<int>(in.channels), static_cast<int>(in.outputs), static_cast<int>(tiles),
                   static_cast<float>(log_eps), c10::cuda::getCurrentCUDAStream()),
               "frontend_stem");
  at::Tensor band_mean = tile_sums.sum(1, /*keepdim=*/false, at::kDouble).div_(in.samples).to(at::kFloat);
  at::Tensor out = acc.sub_(stem_of_band_means(band_mean, in.stem_weight, in.samples, in.outputs));
  return {out, band_mean};
}

void frontend_elementwise_backward_cuda(at::Tensor& y, at::Tensor& grad_bands, const at::Tensor& grad_band_mean,
                                        const at::Tensor& band_mean, double log_eps) {
  TORCH_CHECK(y.is_contiguous() && grad_bands.is_contiguous(), "avfused_ext: internal buffers must be contiguous");
  const at::Tensor gm = grad_band_mean.contiguous(), bm = band_mean.contiguous();
  check_launch(cuda::launch_frontend_elementwise_backward(y.data_ptr<float>(), grad_bands.data_ptr<float>(),
                                                          gm.data_ptr<float>(), bm.data_ptr<float>(), y.numel(),
                                                          y.size(2), static_cast<float>(log_eps),
                                                          c10::cuda::getCurrentCUDAStream()),
               "frontend_stem_backward");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> frontend_stem_backward_cuda(const at::Tensor& grad_out,
                                                                          const at::Tensor& x,
                                                                          const at::Tensor& filters,
                                                                          const at::Tensor& stem_weight,
                                                                          const at::Tensor& band_mean, double log_eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  return frontend_stem_backward_composite(grad_out, x, filters, stem_weight, band_mean, log_eps,
                                          c10::DeviceType::CUDA, frontend_elementwise_backward_cuda);
}

at::Tensor token_attention_cuda(const at::Tensor& tokens, const at::Tensor& pos, const at::Tensor& ln_weight,
                                const at::Tensor& ln_bias, const at::Tensor& lin_weight, const at::Tensor& lin_bias,
                                double eps) {
  const TokenAttentionInputs in =
      check_token_attention_inputs(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, c10::DeviceType::CUDA);
  const int padded = cuda::token_attention_padded_dim(static_cast<int>(in.dim));
  TORCH_CHECK(padded > 0, "avfused_ext.token_attention: token dim at most 128 on CUDA, got ", in.dim);
  TORCH_CHECK(in.batch <= 65535, "avfused_ext.token_attention: at most 65535 clips per call on CUDA, got ", in.batch);
  check_int_range(in.length, "tokens", "token_attention");
  const c10::cuda::CUDAGuard guard(in.tokens.device());
  at::Tensor u = at::empty({in.batch, in.length, padded}, in.tokens.options());
  at::Tensor out = at::empty_like(in.tokens);
  check_launch(cuda::launch_token_attention_forward(
                   in.tokens.data_ptr<float>(), in.pos.data_ptr<float>(), in.ln_weight.data_ptr<float>(),
                   in.ln_bias.data_ptr<float>(), in.lin_weight.data_ptr<float>(), in.lin_bias.data_ptr<float>(),
                   u.data_ptr<float>(), out.data_ptr<float>(), static_cast<int>(in.batch),
                   static_cast<int>(in.length), static_cast<int>(in.dim), static_cast<float>(eps),
                   c10::cuda::getCurrentCUDAStream()),
               "token_attention");
  return out;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("frontend_stem", &avfused::frontend_stem_cuda);
  m.impl("frontend_stem_backward", &avfused::frontend_stem_backward_cuda);
  m.impl("token_attention", &avfused::token_attention_cuda);
}

extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", "avfused_ext CUDA kernels", -1, nullptr};
  return PyModule_Create(&module);
}
