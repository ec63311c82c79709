// The avfused_ext operator library: schemas, CPU kernels, device-generic backward, and the Python
// module avfused._C_cpu whose import runs these registrations.
//
// The CUDA kernels live in a second module (avfused._C_cuda, csrc/cuda/registration_cuda.cpp) so that a
// CPU-only build still works. large_kernel_attention and conv_mlp have CPU kernels only (on CUDA tensors
// the Python wrappers use the reference). Fake (meta) kernels and autograd are registered from Python
// (avfused/ops/cuda_impl.py).
#include <Python.h>
#include <torch/library.h>

#include "avfused_ops.h"
#include "frontend_stem_common.h"
#include "token_attention_common.h"

namespace avfused {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> frontend_stem_backward_cpu(const at::Tensor& grad_out,
                                                                         const at::Tensor& x,
                                                                         const at::Tensor& filters,
                                                                         const at::Tensor& stem_weight,
                                                                         const at::Tensor& band_mean, double log_eps) {
  return frontend_stem_backward_composite(grad_out, x, filters, stem_weight, band_mean, log_eps, c10::DeviceType::CPU,
                                          frontend_elementwise_backward_cpu);
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY(avfused_ext, m) {
  m.def("frontend_stem(Tensor x, Tensor filters, Tensor stem_weight, float log_eps) -> (Tensor, Tensor)");
  m.def(
      "frontend_stem_backward(Tensor grad_out, Tensor x, Tensor filters, Tensor stem_weight, Tensor band_mean, "
      "float log_eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "token_attention(Tensor tokens, Tensor pos, Tensor ln_weight, Tensor ln_bias, Tensor lin_weight, "
      "Tensor lin_bias, float eps) -> Tensor");
  m.def(
      "token_attention_backward(Tensor grad_out, Tensor tokens, Tensor pos, Tensor ln_weight, Tensor ln_bias, "
      "Tensor lin_weight, Tensor lin_bias, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("large_kernel_attention(Tensor p, Tensor w5, Tensor b5, Tensor w7, Tensor b7, Tensor w1, Tensor b1) -> Tensor");
  m.def("conv_mlp(Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw, Tensor w_out, Tensor b_out) -> Tensor");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("frontend_stem", &avfused::frontend_stem_cpu);
  m.impl("frontend_stem_backward", &avfused::frontend_stem_backward_cpu);
  m.impl("token_attention", &avfused::token_attention_cpu);
  m.impl("large_kernel_attention", &avfused::large_kernel_attention_cpu);
  m.impl("conv_mlp", &avfused::conv_mlp_cpu);
}

// Pure ATen: runs on whatever device its inputs live on.
TORCH_LIBRARY_IMPL(avfused_ext, CompositeExplicitAutograd, m) {
  m.impl("token_attention_backward", &avfused::token_attention_backward_composite);
}

extern "C" PyObject* PyInit__C_cpu(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cpu", "avfused_ext CPU kernels", -1, nullptr};
  return PyModule_Create(&module);
}
