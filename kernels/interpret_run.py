"""Run the Triton kernels on CPU tensors under ``TRITON_INTERPRET=1``, in a fresh process.

Why a process: Triton reads ``TRITON_INTERPRET`` when a kernel is decorated (at import), and so do
triton.language's own jit helpers (``tl.randn``). A process that has imported the kernels for the
GPU cannot switch, and setting the variable in a shared test process would leak into every later
test (the dispatch would send CPU tensors to the interpreter). So the tests hand their inputs over in
a ``torch.save`` file and read the outputs back the same way. The child calls the public dispatch
functions with ``WORLDSIM_KERNELS=triton``: a silent fallback to the reference would raise instead.

    python -m kernels.interpret_run CALLS.pt OUT.pt

``CALLS.pt`` holds a list of ``(name, args, kwargs)`` with ``name`` one of ``CALLS``; ``OUT.pt`` gets
the list of results in the same order.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CALLS = ("block_causal_attention", "noise_update")


def interpreter_unusable() -> str | None:
    """Why Triton's interpreter cannot run our kernels here (None if it can).

    Triton 3.6's interpreter turns a loop bound computed from ``tl.program_id`` into ``int()`` of a
    one-element array, which recent NumPy refuses ("only 0-dimensional arrays can be converted"; 2.4
    here, 2.5 on the GPU machines); Triton 3.7+ passes a scalar. Compiled kernels are unaffected (tests/test_gpu.py runs them on a GPU).
    """
    try:
        import numpy as np
        import triton
    except ImportError as e:
        return f"triton is not installed ({e})"
    major_minor = tuple(int(p) for p in triton.__version__.split(".")[:2])
    if major_minor < (3, 7):
        try:
            int(np.ones(1, dtype=np.int32))
        except TypeError:
            return (f"triton {triton.__version__}'s interpreter cannot run with numpy {np.__version__} "
                    f"(fixed in triton 3.7); the compiled kernels are tested by tests/test_gpu.py")
    return None


def run_interpreted(calls: list[tuple[str, tuple, dict]], timeout: float = 300.0) -> list[torch.Tensor]:
    """Run each ``(name, args, kwargs)`` through ``kernels.<name>`` on Triton's CPU interpreter."""
    for name, _, _ in calls:
        if name not in CALLS:
            raise ValueError(f"unknown kernel call {name!r}; expected one of {CALLS}")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="1", WORLDSIM_KERNELS="triton",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="worldsim-interp-") as tmp:
        src, dst = Path(tmp, "calls.pt"), Path(tmp, "out.pt")
        torch.save(list(calls), src)
        proc = subprocess.run([sys.executable, "-m", "kernels.interpret_run", str(src), str(dst)], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=root)
        if proc.returncode:
            raise RuntimeError(f"interpreted kernels failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return torch.load(dst, weights_only=True)


def _main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1 (run_interpreted does)", file=sys.stderr)
        return 2
    import kernels  # only now: the kernels get decorated for the interpreter

    calls = torch.load(argv[0], weights_only=True)
    outs = [getattr(kernels, name)(*args, **kwargs) for name, args, kwargs in calls]
    torch.save(outs, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
