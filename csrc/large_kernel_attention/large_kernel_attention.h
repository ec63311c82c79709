// large_kernel_attention: the VPM's gate by large-kernel context (avfused/reference.py's
// large_kernel_attention; the Python side is avfused/ops/large_kernel_attention.py).
//
// Op (schema in large_kernel_attention_cpu.cpp):
//   large_kernel_attention(p (N,C,H,W), w5 (C,25), b5 (C,), w7 (C,49), b7 (C,), w1 (C,C), b1 (C,)) -> (N,C,H,W)
//   c5 = dw5x5(p) + b5,  c7 = dw7x7_dilation3(c5) + b7,  out = p * (W1 c7 + b1)   ('same' zero padding)
// CPU forward only; its autograd (avfused/ops/large_kernel_attention.py) recomputes through the reference.
#pragma once
