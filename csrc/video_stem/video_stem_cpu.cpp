// video_stem on the CPU, one pass per image: the stride-2 convolution row by row straight from the
// frames, its ReLU and 3x3 stride-2 max-pool applied to each row as it comes out, so the (C, Ho, Wo)
// convolution output never reaches memory.
//
// Stride 2 without gathers: each padded input row is split into its four phases (columns 4j + q), so
// the even and the odd output columns of a row each read every tap as one contiguous vector. Splitting
// the output by column parity is also what the stride-2 pooling wants: pooled column p takes the
// maximum of odd column p - 1, even column p and odd column p + 1, three contiguous loads. Every pooled
// value is a maximum over ReLU outputs, so starting each maximum at 0 is the ReLU and the pool's
// padding at once.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/depthwise.h"
#include "video_stem.h"

namespace avfused {
namespace {

using namespace depthwise;
using video_stem::conv_size;
using video_stem::pool_size;

struct StemArgs {
  const float* frames;  // (N, I, H, W)
  const float* taps;    // (C_padded / G, I K K, G): each channel block's G weights of a tap side by side
  const float* bias;    // (C_padded,)
  const float* border;  // (I,) the padding value of each input channel
  float* out;           // (N, C, Hp, Wp)
  int64_t in_channels, channels, kernel, height, width;
};

template <int W>
struct StemGeometry {
  static constexpr int G = W == 16 ? 8 : 4;  // output channels per block: G x U accumulators fit the registers
  static constexpr int U = 2;                 // vectors of one output row per block
};

// dst[g * dst_stride + j0 + u W ...] = bias[g] + sum_t taps[t][g] src[t][j0 + u W ...] for U vectors.
template <int W, int U>
AVFUSED_INLINE void conv_chunk(const float* const* src, int64_t tap_count, const float* taps, const float* bias,
                               float* dst, int64_t dst_stride, int64_t j0) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = StemGeometry<W>::G;
  V acc[G][U];
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) acc[g][u] = simd::splat<V>(bias[g]);
  }
  for (int64_t t = 0; t < tap_count; ++t) {
    V pixels[U];
    for (int u = 0; u < U; ++u) pixels[u] = simd::load<V>(src[t] + j0 + u * W);
    const float* w = taps + t * G;
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      for (int u = 0; u < U; ++u) acc[g][u] += w[g] * pixels[u];
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) simd::store(dst + g * dst_stride + j0 + u * W, acc[g][u]);
  }
}

template <class V>
AVFUSED_INLINE V maximum(V a, V b) {
  return a > b ? a : b;
}

// One image's buffers, allocated once per thread: the phase planes, one convolution row by parity.
struct StemBuffers {
  std::vector<float> phases, even, odd;
  std::vector<const float*> sources;
};

template <int W>
AVFUSED_INLINE void stem_image(const StemArgs& a, int64_t n, StemBuffers& buf) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = StemGeometry<W>::G, U = StemGeometry<W>::U;
  const int64_t in_channels = a.in_channels, channels = a.channels, kernel = a.kernel, pad = kernel / 2;
  const int64_t height = a.height, width = a.width;
  const int64_t conv_rows = conv_size(height), conv_cols = conv_size(width);
  const int64_t pool_rows = pool_size(conv_rows), pool_cols = pool_size(conv_cols);
  const int64_t even_cols = (conv_cols + 1) / 2, odd_cols = conv_cols / 2;  // even_cols == pool_cols
  const int64_t lanes = round_up(even_cols, W);
  const int64_t padded_rows = height + 2 * pad, padded_cols = width + 2 * pad;
  // phase row j: padded column 4 j + q; a tap reads up to (kernel + 1) / 4 past a vector's start
  const int64_t phase_len = std::max((padded_cols + 3) / 4, lanes + (kernel + 1) / 4 + 1);
  const int64_t blocks = round_up(channels, G) / G, taps_per_channel = in_channels * kernel * kernel;
  const int64_t even_stride = lanes, odd_stride = lanes + W;  // odd rows: a zero, then odd column j at 1 + j

  // Entries past the padded row are never written: they stay zero from this allocation, and only feed
  // output columns past the image.
  const int64_t phase_size = in_channels * padded_rows * 4 * phase_len;
  if (static_cast<int64_t>(buf.phases.size()) != phase_size) buf.phases.assign(phase_size, 0.f);
  buf.even.assign(blocks * G * even_stride, 0.f);
  buf.odd.assign(blocks * G * odd_stride, 0.f);
  buf.sources.resize(taps_per_channel);
  float* phases = buf.phases.data();
  const float* frames = a.frames + n * in_channels * height * width;
  for (int64_t i = 0; i < in_channels; ++i) {
    const float border = a.border[i];
    for (int64_t r = 0; r < padded_rows; ++r) {
      float* row = phases + (i * padded_rows + r) * 4 * phase_len;
      const bool inside = r >= pad && r < pad + height;
      const float* source = frames + (i * height + (r - pad)) * width;
      for (int64_t c = 0; c < padded_cols; ++c) {
        const bool valid = inside && c >= pad && c < pad + width;
        row[(c & 3) * phase_len + (c >> 2)] = valid ? source[c - pad] : border;
      }
    }
  }
  float* out = a.out + n * channels * pool_rows * pool_cols;
  std::fill(out, out + channels * pool_rows * pool_cols, 0.f);

  for (int64_t y = 0; y < conv_rows; ++y) {
    for (int parity = 0; parity < 2; ++parity) {
      // even column 2j reads padded column 4j + kx, odd column 2j + 1 reads 4j + 2 + kx
      int64_t t = 0;
      for (int64_t i = 0; i < in_channels; ++i) {
        for (int64_t ky = 0; ky < kernel; ++ky) {
          const float* row = phases + (i * padded_rows + 2 * y + ky) * 4 * phase_len;
          for (int64_t kx = 0; kx < kernel; ++kx, ++t) {
            const int64_t shift = kx + 2 * parity;
            buf.sources[t] = row + (shift & 3) * phase_len + (shift >> 2);
          }
        }
      }
      for (int64_t block = 0; block < blocks; ++block) {
        const float* taps = a.taps + block * taps_per_channel * G;
        const float* bias = a.bias + block * G;
        float* dst = parity == 0 ? buf.even.data() + block * G * even_stride
                                 : buf.odd.data() + block * G * odd_stride + 1;
        const int64_t stride = parity == 0 ? even_stride : odd_stride;
        int64_t j = 0;
        for (; j + U * W <= lanes; j += U * W) {
          conv_chunk<W, U>(buf.sources.data(), taps_per_channel, taps, bias, dst, stride, j);
        }
        for (; j < lanes; j += W) conv_chunk<W, 1>(buf.sources.data(), taps_per_channel, taps, bias, dst, stride, j);
      }
    }
    // pooled rows this convolution row belongs to: 2 py - 1 <= y <= 2 py + 1
    const int64_t first = y / 2, last = std::min((y + 1) / 2, pool_rows - 1);
    for (int64_t c = 0; c < channels; ++c) {
      const float* even = buf.even.data() + c * even_stride;
      float* odd = buf.odd.data() + c * odd_stride;
      std::fill(odd + 1 + odd_cols, odd + odd_stride, 0.f);  // odd columns past the image: the pool's padding
      for (int64_t p = 0; p < pool_cols; p += W) {
        const V pooled = maximum(maximum(simd::load<V>(odd + p), simd::load<V>(even + p)), simd::load<V>(odd + p + 1));
        const int64_t count = std::min<int64_t>(W, pool_cols - p);
        for (int64_t py = first; py <= last; ++py) {
          float* target = out + (c * pool_rows + py) * pool_cols + p;
          if (count == W) {
            simd::store(target, maximum(simd::load<V>(target), pooled));
          } else {
            store_first(target, maximum(load_first<V>(target, count), pooled), count);
          }
        }
      }
    }
  }
}

template <int W>
AVFUSED_INLINE void stem_images(const StemArgs& a, int64_t begin, int64_t end) {
  StemBuffers buffers;
  for (int64_t n = begin; n < end; ++n) stem_image<W>(a, n, buffers);
}

AVFUSED_TARGET_CLONES
void stem_images_w8(const StemArgs& a, int64_t begin, int64_t end) { stem_images<8>(a, begin, end); }

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void stem_images_w16(const StemArgs& a, int64_t begin, int64_t end) { stem_images<16>(a, begin, end); }
#endif

at::Tensor video_stem_cpu(const at::Tensor& frames, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& border) {
  const char* op = "video_stem";
  const std::vector<int64_t> sizes = check_images(op, "frames", frames);
  TORCH_CHECK(weight.dim() == 4, "avfused_ext.video_stem: weight must be (C, I, K, K), got shape ", weight.sizes());
  const int64_t channels = weight.size(0), in_channels = sizes[1], kernel = weight.size(3);
  TORCH_CHECK(channels > 0 && kernel % 2 == 1, "avfused_ext.video_stem: weight must be (C, I, K, K) with C > 0 and K odd, "
              "got shape ", weight.sizes());
  check_image_op_tensor(op, "weight", weight, {channels, in_channels, kernel, kernel});
  check_image_op_tensor(op, "bias", bias, {channels});
  check_image_op_tensor(op, "border", border, {in_channels});
  const bool wide = simd::use_wide_vectors();
  const int64_t group = wide ? StemGeometry<16>::G : StemGeometry<8>::G;
  const int64_t padded = round_up(channels, group), taps = in_channels * kernel * kernel;
  // zero weights and bias for the padding channels, then (blocks, taps, G)
  at::Tensor w = at::zeros({padded, taps}, weight.options());
  w.narrow(0, 0, channels).copy_(weight.reshape({channels, taps}));
  w = w.reshape({padded / group, group, taps}).permute({0, 2, 1}).contiguous();
  at::Tensor b = at::zeros({padded}, bias.options());
  b.narrow(0, 0, channels).copy_(bias);
  const at::Tensor frames_c = frames.contiguous(), border_c = border.contiguous();
  const int64_t pool_rows = pool_size(conv_size(sizes[2])), pool_cols = pool_size(conv_size(sizes[3]));
  at::Tensor out = at::empty({sizes[0], channels, pool_rows, pool_cols}, frames.options());
  const StemArgs args{frames_c.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(),
                      border_c.data_ptr<float>(), out.data_ptr<float>(), in_channels, channels, kernel,
                      sizes[2], sizes[3]};
  at::parallel_for(0, sizes[0], 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return stem_images_w16(args, begin, end);
#endif
    stem_images_w8(args, begin, end);
  });
  return out;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("video_stem(Tensor frames, Tensor weight, Tensor bias, Tensor border) -> Tensor");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) { m.impl("video_stem", &avfused::video_stem_cpu); }
