// audio_frontend_stem: the fused audio front end + audio stem (avfused/reference.py's audio_frontend_stem
// with x already pre-emphasised and normalised and the sinc filters built; the Python side is
// avfused/ops/audio_frontend_stem.py). Shared by the CPU (audio_frontend_stem_cpu.cpp) and CUDA
// (audio_frontend_stem_cuda.cu, audio_frontend_stem_cuda_host.cpp) halves.
//
// Ops (schemas in audio_frontend_stem_cpu.cpp):
//   audio_frontend_stem(x (B,S), filters (F,K), stem_weight (C,F,7), log_eps, exact_below, linear_phase,
//                       formulation) -> (out (B,C,ceil(S/4)), band_mean (B,F))
//       formulation: "direct" (the sum over taps), "fft" (overlap-save, CPU only: audio_frontend_stem_fft_cpu.cpp)
//       or "auto" (the FFT on the CPU where the filters are long enough for it to be faster)
//   audio_frontend_stem_backward(grad_out, x, filters, stem_weight, band_mean, log_eps, exact_below,
//                                linear_phase, output_mask) -> (grad_x, grad_filters, grad_stem_weight)
// x and filters are float32 or float64 (one dtype); the arithmetic is float32 except where it is ill
// conditioned (below). Gradients come back in their inputs' dtypes; a gradient off in output_mask is an
// empty tensor.
//
// Forward math:
//   y[b,f,t]  = sum_k h[f,k] x[b, t + k - K/2]            (zero padded, stride 1)
//   a[b,f,t]  = log(|y| + eps),  m[b,f] = mean_t a[b,f,t]
//   out[b,c,o] = sum_{f,j} w[c,f,j] (a - m)[b, f, 4 o + j - 3]   (zero padded)
//             = stem(a)[b,c,o] - sum_j M[b,c,j] [0 <= 4 o + j - 3 < S],  M[b,c,j] = sum_f m[b,f] w[c,f,j]
// Backward math (g = grad_out; every sum over positions t in [0, S)):
//   G[b,f,t]  = sum_{c, j, o: 4 o + j - 3 = t} w[c,f,j] g[b,c,o]      (the stem transposed)
//   dy        = (G - mean_t G) sign(y) / (|y| + eps)                  (abs, log and mean removal)
//   dw[c,f,j] = sum_{b,o} g[b,c,o] (a - m)[b, f, 4 o + j - 3],  dh[f,k] = sum_{b,t} dy x[b, t + k - K/2],
//   dx[b,s]   = sum_{f,t} dy[b,f,t] h[f, s - t + K/2].
// Both directions tile time and recompute each tile's band responses, so no (B, F, S) tensor is written.
//
// Accuracy (docs/design.md, section 4): log(|y| + eps) and its derivative 1 / (|y| + eps) magnify the
// float32 rounding of y where a band response is near zero. Samples with
//   |y[b,f,t]| < exact_below * ||h_f||_2 * rms_t(b)      (rms_t: the root mean square of the K inputs
//                                                          of y[b,f,t], the scale of its rounding error)
// are recomputed in float64 from the float64 x and filters, in the forward and the backward, and their
// share of the backward (dh, dx) is accumulated in float64. exact_below = 0 turns this off.
// linear_phase: the filters are symmetric by construction; the op then computes with (h + flip(h)) / 2
// and returns the gradient for that (symmetric, half the multiplies in dh).
#pragma once

#include <cstdint>

namespace avfused {

constexpr int64_t kStemKernel = 7;
constexpr int64_t kStemStride = 4;
constexpr int64_t kStemPad = 3;
constexpr double kDefaultExactBelow = 1e-3;  // measured: docs/design.md, section 4
constexpr int kCudaFrontendOutTile = 63;     // stem outputs per CUDA forward block: 4 * 63 + 3 = 255 positions
constexpr int kCudaBackwardTile = 256;       // band positions per CUDA backward tile (one per thread)
constexpr int kCudaBackwardFilters = 4;      // filters per CUDA backward block

#ifdef CUDART_VERSION  // the CUDA launchers (audio_frontend_stem_cuda.cu): plain pointers and a stream
namespace cuda {
// What both directions read. x / filters are float32 copies; x64 / filters64 the float64 originals
// used by the exact recompute; filter_norms (F,) = ||h_f||_2.
struct FrontendArgs {
  const float* x;
  const double* x64;
  const float* filters;
  const double* filters64;
  const float* filter_norms;
  const float* weight;  // (C, F, 7)
  int batch, samples, filter_count, taps, channels, outputs;
  float log_eps, exact_below;
  bool symmetric;  // the filters are linear phase: fold taps k and K-1-k
};

// acc (B, C, O): stem of the log band energies; tile_sums (B, tiles, F): per-tile sums of the energies.
cudaError_t launch_audio_frontend_stem_forward(const FrontendArgs& a, float* acc, float* tile_sums, int tiles,
                                               cudaStream_t stream);

// grad (B, C, O) contiguous, band_mean / grad_band_mean (B, F) (the latter = mean_t G). Accumulates with
// atomics into zeroed grad_x (B, S) float64, grad_filters (F, K) float64 and grad_weight (C, F, 7)
// float64; a null output pointer skips that gradient. symmetric_grad: dh for (h + flip(h)) / 2, folded.
cudaError_t launch_audio_frontend_stem_backward(const FrontendArgs& a, const float* grad, const float* band_mean,
                                                const float* grad_band_mean, double* grad_x, double* grad_filters,
                                                double* grad_weight, bool symmetric_grad, cudaStream_t stream);

// Shared memory of one backward block (the host refuses sizes the device cannot hold).
size_t audio_frontend_stem_backward_shared_bytes(int taps, int channels, bool fold, bool exact, bool dx);
}  // namespace cuda
#endif

}  // namespace avfused

#ifndef __CUDACC__  // the ATen half: input checks and the device-independent set-up of both directions
#include <ATen/ATen.h>

#include <array>
#include <tuple>
#include <vector>

namespace avfused {

// Validated inputs and their sizes: x / filters as float32 for the fast path and float64 for the exact
// recompute (symmetrised when the filters are used as linear phase), all contiguous.
struct AudioFrontendStemInputs {
  at::Tensor x, x64, filters, filters64, stem_weight, filter_norms;
  at::ScalarType x_dtype, filters_dtype;
  int64_t batch, samples, filters_count, taps, channels, outputs;
  bool symmetric;  // compute with folded (linear-phase) taps
};

inline AudioFrontendStemInputs check_audio_frontend_stem_inputs(const at::Tensor& x, const at::Tensor& filters,
                                                                const at::Tensor& stem_weight, bool linear_phase,
                                                                double exact_below, c10::DeviceType device) {
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
  TORCH_CHECK((x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
                  filters.scalar_type() == x.scalar_type(),
              "avfused_ext.audio_frontend_stem: x and filters must both be float32 or both float64, got ",
              x.scalar_type(), " and ", filters.scalar_type());
  TORCH_CHECK(stem_weight.scalar_type() == at::kFloat,
              "avfused_ext.audio_frontend_stem: stem_weight must be float32, got ", stem_weight.scalar_type());
  TORCH_CHECK(exact_below >= 0, "avfused_ext.audio_frontend_stem: exact_below must be >= 0, got ", exact_below);
  for (const at::Tensor* t : {&x, &filters, &stem_weight}) {
    TORCH_CHECK(t->device().type() == device, "avfused_ext.audio_frontend_stem: expected ", c10::DeviceTypeName(device),
                " tensors, got one on ", t->device());
    TORCH_CHECK(t->device() == x.device(), "avfused_ext.audio_frontend_stem: all tensors must be on one device, got ",
                x.device(), " and ", t->device());
  }
  AudioFrontendStemInputs in;
  in.x_dtype = x.scalar_type();
  in.filters_dtype = filters.scalar_type();
  in.x64 = x.to(at::kDouble).contiguous();
  in.x = x.to(at::kFloat).contiguous();
  at::Tensor h64 = filters.to(at::kDouble);
  if (linear_phase) {
    in.symmetric = true;
  } else {  // linear phase up to rounding: average each tap with its mirror (exact up to rounding), half the work
    const at::Tensor h = filters.to(at::kFloat);
    const double asymmetry = (h - h.flip(1)).abs().max().item<double>();
    const double scale = h.abs().max().item<double>();
    in.symmetric = asymmetry <= 1e-6 * std::max(scale, 1e-30);
  }
  if (in.symmetric) h64 = (h64 + h64.flip(1)).mul_(0.5);
  in.filters64 = h64.contiguous();
  in.filters = in.filters64.to(at::kFloat).contiguous();
  in.filter_norms = exact_below > 0 ? in.filters64.norm(2, {1}).to(at::kFloat).contiguous()
                                    : at::zeros({filters.size(0)}, in.filters.options());
  in.stem_weight = stem_weight.contiguous();
  in.batch = x.size(0);
  in.samples = x.size(1);
  in.filters_count = filters.size(0);
  in.taps = filters.size(1);
  in.channels = stem_weight.size(0);
  in.outputs = (in.samples + kStemStride - 1) / kStemStride;
  return in;
}

// The forward by FFT (audio_frontend_stem_fft_cpu.cpp): stem outputs per tile for K taps (< 1: K too long
// for its window), and (acc (B, C, O), tile_sums (B, tiles, F)) as the direct forward's before mean removal.
int64_t fft_forward_out_tile(int64_t taps);
std::tuple<at::Tensor, at::Tensor> audio_frontend_stem_fft_forward(const AudioFrontendStemInputs& in, double log_eps,
                                                                   double exact_below);

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

// mean_t G[b, f, t] = (1/S) sum_{c,j} w[c,f,j] sum_{o: tap j of o inside} g[b,c,o]: (B, F), float32.
inline at::Tensor mean_band_gradient(const at::Tensor& grad, const at::Tensor& stem_weight, int64_t samples) {
  const at::Tensor g = grad.to(at::kDouble);
  const at::Tensor per_tap = at::matmul(g, stem_tap_inside(samples, grad.size(2), g.options()));  // (B, C, 7)
  return at::einsum("bcj,cfj->bf", {per_tap, stem_weight.to(at::kDouble)}).div_(samples).to(at::kFloat);
}

// The backward's checks on top of the forward's; returns grad_out as contiguous float32.
inline at::Tensor check_audio_frontend_stem_backward(const AudioFrontendStemInputs& in, const at::Tensor& grad_out,
                                                     const at::Tensor& band_mean) {
  const std::vector<int64_t> out_shape{in.batch, in.channels, in.outputs};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape),
              "avfused_ext.audio_frontend_stem_backward: grad_out must be ", out_shape, ", got ", grad_out.sizes());
  TORCH_CHECK(band_mean.sizes() == at::IntArrayRef({in.batch, in.filters_count}),
              "avfused_ext.audio_frontend_stem_backward: band_mean must be (batch, filters), got ", band_mean.sizes());
  TORCH_CHECK(grad_out.device() == in.x.device() && band_mean.device() == in.x.device(),
              "avfused_ext.audio_frontend_stem_backward: grad_out and band_mean must be on ", in.x.device());
  return grad_out.to(at::kFloat).contiguous();
}

// The gradients in their inputs' dtypes from the float64 accumulators (an undefined accumulator: that
// gradient was not asked for, returned empty). A symmetric tap gradient is the gradient for
// (h + flip(h)) / 2: its mirror average.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_audio_frontend_stem_backward(
    const AudioFrontendStemInputs& in, const at::Tensor& grad_x, const at::Tensor& grad_filters,
    const at::Tensor& grad_weight, bool linear_phase) {
  const auto empty = [&](at::ScalarType dtype) { return at::empty({0}, in.x.options().dtype(dtype)); };
  at::Tensor dx = grad_x.defined() ? grad_x.to(in.x_dtype) : empty(in.x_dtype);
  at::Tensor dh = empty(in.filters_dtype);
  if (grad_filters.defined()) {
    dh = linear_phase ? (grad_filters + grad_filters.flip(1)).mul_(0.5) : grad_filters;
    dh = dh.to(in.filters_dtype);
  }
  at::Tensor dw = grad_weight.defined() ? grad_weight.to(at::kFloat) : empty(at::kFloat);
  return {dx, dh, dw};
}

}  // namespace avfused
#endif  // __CUDACC__
