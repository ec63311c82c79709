// audio_squeeze_stats: the batch statistics of the SAAVM's audio squeeze convolution, which training needs
// for its batch norm (avfused/reference.py's audio_squeeze_stats; the Python side is
// avfused/ops/audio_squeeze_stats.py).
//
// Ops (schemas in audio_squeeze_stats_cpu.cpp):
//   audio_squeeze_stats(audio (B,C,L), weight (C,C,K), bias (C,)) -> (mean (C,), var (C,))
//   z = conv1d(audio, weight) + bias ('same' zero padding, K odd);  over the M = B L positions of each
//   channel: mean = sum z / M,  var = sum (z - mean)^2 / M (biased)
//   audio_squeeze_stats_backward(grad_mean (C,), grad_var (C,), audio, weight, bias, mean (C,))
//     -> (grad_audio, grad_weight, grad_bias)
//   grad_z = grad_mean / M + 2 grad_var (z - mean) / M, then back through the convolution.
// CPU only. z is computed tile by tile (its moments merged in double) and recomputed so in the backward,
// never stored beyond one tile.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace avfused::audio_squeeze_stats {

constexpr int64_t kTile = 512;  // positions per work unit

// Mean and sum of squared deviations of `count` values, in double (two passes over values in cache).
struct Moments {
  double count = 0.0, mean = 0.0, m2 = 0.0;

  // Chan et al.'s pairwise update: this and another set of values together.
  void merge(const Moments& other) {
    const double total = count + other.count, delta = other.mean - mean;
    mean += delta * other.count / total;
    m2 += other.m2 + delta * delta * count * other.count / total;
    count = total;
  }
};

inline Moments row_moments(const float* values, int64_t count) {
  double sum = 0.0;
  for (int64_t i = 0; i < count; ++i) sum += values[i];
  const double mean = sum / static_cast<double>(count);
  double m2 = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const double deviation = values[i] - mean;
    m2 += deviation * deviation;
  }
  return {static_cast<double>(count), mean, m2};
}

}  // namespace avfused::audio_squeeze_stats
