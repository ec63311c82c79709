"""Triton kernels of avfused, installed as ``avfused.kernels``; one module per fused op.

Nothing is imported here, so ``import avfused.kernels`` never needs triton; the op modules in
``avfused.ops.<op>`` (same name) import the kernel module they launch.
"""
