// Declarations shared by the CPU and CUDA extension modules of avfused.
//
// Ops (schemas in registration.cpp, math in avfused/reference.py):
//   frontend_stem(x (B,S), filters (F,K), stem_weight (C,F,7), log_eps) -> (out (B,C,ceil(S/4)), band_mean (B,F))
//   frontend_stem_backward(grad_out, x, filters, stem_weight, band_mean, log_eps) -> (grad_x, grad_filters, grad_stem)
//   token_attention(tokens (B,L,D), pos (L,D), ln_w, ln_b, lin_w (D,D), lin_b, eps) -> (B,L,D)
//   token_attention_backward(grad_out, tokens, pos, ln_w, ln_b, lin_w, lin_b, eps) -> six gradients
//   large_kernel_attention(p (N,C,H,W), w5 (C,25), b5, w7 (C,49), b7, w1 (C,C), b1) -> (N,C,H,W)   [CPU only]
//   conv_mlp(x (N,C,H,W), w_in (E,C), b_in, w_dw (E,9), b_dw, w_out (C,E), b_out) -> (N,C,H,W)     [CPU only]
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace avfused {

constexpr int64_t kStemKernel = 7;
constexpr int64_t kStemStride = 4;
constexpr int64_t kStemPad = 3;

// ---- front end + stem ------------------------------------------------------------------
// Validates shapes/dtypes/devices and returns contiguous float32 copies where needed.
struct FrontendStemInputs {
  at::Tensor x, filters, stem_weight;
  int64_t batch, samples, filters_count, taps, channels, outputs;
};
FrontendStemInputs check_frontend_stem_inputs(const at::Tensor& x, const at::Tensor& filters,
                                              const at::Tensor& stem_weight, c10::DeviceType device);

// The stem of the constant band means that mean removal subtracts: (B, C, O), from band_mean (B, F).
at::Tensor stem_of_band_means(const at::Tensor& band_mean, const at::Tensor& stem_weight, int64_t samples,
                              int64_t outputs);

// The backward shared by both devices: ATen convolutions around one fused elementwise step that
// `elementwise` runs in place: grad_bands <- (grad_bands - mean) * sign(y) / (|y| + eps),
// y <- log(|y| + eps) - band_mean.
using FrontendElementwiseFn = void (*)(at::Tensor& y, at::Tensor& grad_bands, const at::Tensor& grad_band_mean,
                                       const at::Tensor& band_mean, double log_eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> frontend_stem_backward_composite(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& filters, const at::Tensor& stem_weight,
    const at::Tensor& band_mean, double log_eps, c10::DeviceType device, FrontendElementwiseFn elementwise);

std::tuple<at::Tensor, at::Tensor> frontend_stem_cpu(const at::Tensor& x, const at::Tensor& filters,
                                                     const at::Tensor& stem_weight, double log_eps);
void frontend_elementwise_backward_cpu(at::Tensor& y, at::Tensor& grad_bands, const at::Tensor& grad_band_mean,
                                       const at::Tensor& band_mean, double log_eps);

// ---- joint token attention ---------------------------------------------------------------
struct TokenAttentionInputs {
  at::Tensor tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias;
  int64_t batch, length, dim;
};
TokenAttentionInputs check_token_attention_inputs(const at::Tensor& tokens, const at::Tensor& pos,
                                                  const at::Tensor& ln_weight, const at::Tensor& ln_bias,
                                                  const at::Tensor& lin_weight, const at::Tensor& lin_bias,
                                                  c10::optional<c10::DeviceType> device);

at::Tensor token_attention_cpu(const at::Tensor& tokens, const at::Tensor& pos, const at::Tensor& ln_weight,
                               const at::Tensor& ln_bias, const at::Tensor& lin_weight, const at::Tensor& lin_bias,
                               double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_attention_backward_composite(
    const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& pos, const at::Tensor& ln_weight,
    const at::Tensor& ln_bias, const at::Tensor& lin_weight, const at::Tensor& lin_bias, double eps);

// ---- VPM: large-kernel attention and conv MLP (CPU forward; the backward recomputes in Python) ------
at::Tensor large_kernel_attention_cpu(const at::Tensor& p, const at::Tensor& w5, const at::Tensor& b5,
                                      const at::Tensor& w7, const at::Tensor& b7, const at::Tensor& w1,
                                      const at::Tensor& b1);
at::Tensor conv_mlp_cpu(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_dw,
                        const at::Tensor& b_dw, const at::Tensor& w_out, const at::Tensor& b_out);

}  // namespace avfused
