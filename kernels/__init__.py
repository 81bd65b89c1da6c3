"""worldsim kernels: Triton on CUDA, a torch reference everywhere else.

Each kernel module holds, in this order: the formula (docstring), the torch reference (the CPU
production path and the test oracle), the Triton kernel and its launcher. ``kernels.dispatch``
is the one place that picks a path. (Unrelated to the PyPI package named ``kernels``.)
"""

from kernels.dispatch import block_causal_attention, noise_update, use_triton

__all__ = ["block_causal_attention", "noise_update", "use_triton"]
