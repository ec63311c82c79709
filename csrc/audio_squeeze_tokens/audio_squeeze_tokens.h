// audio_squeeze_tokens: the SAAVM's audio squeeze straight into tokens (avfused/reference.py's
// audio_squeeze_tokens; the Python side is avfused/ops/audio_squeeze_tokens.py).
//
// Op (schema in audio_squeeze_tokens_cpu.cpp):
//   audio_squeeze_tokens(audio (B,C,L), weight (C,C,K1), bias (C,), to_one (1,C,K2), to_one_bias (1,),
//                        int frames T, int token_dim D) -> (B, T, D)
//   hidden = ReLU(conv1d(audio, weight) + bias),  signal = conv1d(hidden, to_one) + to_one_bias  ('same' zeros)
//   token value j of the T D: the mean of signal over [floor(j L / (T D)), ceil((j + 1) L / (T D)))
// K1, K2 odd. CPU forward only; its autograd (avfused/ops/audio_squeeze_tokens.py) recomputes through the
// reference.
#pragma once

#include <cstdint>

namespace avfused::audio_squeeze_tokens {

constexpr int64_t kTile = 512;  // signal positions per work unit (the hidden layer's halo is K2 - 1 more)

}  // namespace avfused::audio_squeeze_tokens
