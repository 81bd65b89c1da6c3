"""Linear weights packed once for oneDNN, for CPU inference.

At frame-wise inference the model's matmuls are tiny (64-128 tokens by 128-512 channels), and a
plain CPU linear spends a fair part of each call re-laying its weight out into oneDNN's blocked
format. Packing every weight once (``torch.ops.mkldnn._reorder_linear_weight``) and calling the
packed product makes the linears ~20% faster and the engine's frame ~5% faster on this 2-core CPU
(an interleaved A/B of 1,500 frame pairs), with the same numbers bit for bit (tests/test_engine.py).
An MLP's GELU is fused into its first packed product (``_FusedMLPForward``): that one rounds once
where the plain path rounds before and after the GELU, so packed and plain frames now agree to bf16
rounding, not bit for bit.

Only for inference: a call that needs gradients, runs under autocast (the packed op would skip its
cast), or on another device or dtype takes the plain ``F.linear`` path; one that finds the weight
changed since it was packed (``load_state_dict`` in place, an optimizer step, a cast) packs it again
first. ``unpack_linears`` restores the modules.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_TOKENS_HINT = 64  # rows the packing is tuned for (one 64x64 frame at patch 8); any row count works


def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed linear (CPU builds with mkldnn do)."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    return hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")


class _PackedForward:
    """``Linear.forward`` over the packed weight; the plain path whenever packing does not apply.
    Lean on purpose: it runs ~50 times a frame, so it checks only what can change."""

    def __init__(self, lin: nn.Linear):
        self.lin = lin
        self.w = self.b = self.packed = self.stamp = None

    @staticmethod
    def _stamp_of(w: torch.Tensor, b: torch.Tensor | None) -> tuple:
        return (w.data_ptr(), w._version) if b is None else (w.data_ptr(), w._version, b.data_ptr(), b._version)

    def _pack(self) -> None:
        params = self.lin._parameters
        self.w, self.b = params["weight"], params["bias"]
        try:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.w.detach(), _TOKENS_HINT) if self.w.is_cpu else None
        except RuntimeError:  # oneDNN packs bf16 only on CPUs with AVX-512 (or AVX-NE-CONVERT): the plain product
            self.packed = None
        self.stamp = self._stamp_of(self.w, self.b)

    # Pickled (a play worker's model goes to its child process): the packed tensor stays behind and
    # the first call there packs again.
    def __getstate__(self):
        return {"lin": self.lin, "w": None, "b": None, "packed": None, "stamp": None}

    def __call__(self, x: torch.Tensor, gelu: str | None = None) -> torch.Tensor:
        """The linear, followed by ``F.gelu(approximate=gelu)`` when ``gelu`` is given (fused into the
        packed product as oneDNN's post-op: on the fp32 accumulator, before the one rounding)."""
        params = self.lin._parameters
        w, b = params["weight"], params["bias"]
        if w is not self.w or b is not self.b or self._stamp_of(w, b) != self.stamp:
            self._pack()  # first call, or the weights were replaced, moved or updated in place
        if self.packed is None or not x.is_cpu or x.dtype != w.dtype or torch.is_autocast_enabled("cpu") or \
                (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)):
            y = F.linear(x, w, b)
            return y if gelu is None else F.gelu(y, approximate=gelu)
        if gelu is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, b, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, b, "gelu", [], gelu)


class _FusedMLPForward:
    """``forward`` of an ``nn.Sequential(Linear, GELU, Linear)`` whose linears are packed: the GELU
    rides on the first product (one op fewer per block and forward, ~4% of a played frame)."""

    def __init__(self, mlp: nn.Sequential):
        self.mlp = mlp

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        first, act, second = self.mlp
        return second(first.forward(x, gelu=act.approximate))


def _is_mlp(m: nn.Module) -> bool:
    return (isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[0], nn.Linear)
            and isinstance(m[1], nn.GELU) and isinstance(m[2], nn.Linear))


def pack_linears(model: nn.Module) -> int:
    """Pack every ``nn.Linear`` of ``model`` for CPU inference; returns how many were packed
    (0 where this torch has no packed linear). Idempotent."""
    if not packing_available():
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if not isinstance(m.__dict__.get("forward"), _PackedForward):
                m.forward = _PackedForward(m)
            n += 1
    for m in model.modules():
        if _is_mlp(m) and not isinstance(m.__dict__.get("forward"), _FusedMLPForward):
            m.forward = _FusedMLPForward(m)
    return n


def unpack_linears(model: nn.Module) -> None:
    """Undo ``pack_linears``: the modules' own ``forward`` again."""
    for m in model.modules():
        if isinstance(m.__dict__.get("forward"), (_PackedForward, _FusedMLPForward)):
            del m.forward


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(m.__dict__.get("forward"), _PackedForward) for m in model.modules() if isinstance(m, nn.Linear))
