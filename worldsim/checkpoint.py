"""Self-describing safetensors checkpoints.

A checkpoint is one ``.safetensors`` file: tensors under prefixes (``model.``, ``ema.``, ...) and
string metadata that rebuilds everything: ``format``, ``role`` (teacher, student, fake_score),
``stage`` and ``step``, ``model_config`` (JSON), ``env_id`` and ``action_meanings`` (JSON),
``resolution``, ``code_version``, plus whatever the writer adds (``engine``, ``train_config``,
``context_frames``...). Writes are atomic (temp file + rename), so a crash never leaves a
half-written checkpoint under the real name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from worldsim import __version__
from worldsim.errors import CheckpointError

FORMAT = "worldsim-ckpt-1"


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    smeta = {"format": FORMAT, "code_version": __version__}
    for k, v in meta.items():
        smeta[k] = v if isinstance(v, str) else json.dumps(v)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=smeta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600: a kiosk or CI user must be able to read a shipped model
    os.replace(tmp, path)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint, JSON values decoded; raises CheckpointError with the fix."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({e}); re-export or retrain it") from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a worldsim checkpoint (format={raw.get('format')!r}); "
                              f"pass a file written by 'worldsim train'")
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return meta


def load_checkpoint(path: str | Path, prefix: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta); with ``prefix`` only those tensors, prefix stripped."""
    meta = read_meta(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({e}); re-export or retrain it") from None
    if prefix is not None:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not tensors:
            raise CheckpointError(f"checkpoint '{path}' holds no '{prefix}*' tensors; it may be from another stage")
    return tensors, meta


def _existing(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' not found; pass --checkpoint PATH to an existing .safetensors file")
    return p


def file_hash(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def build_model(meta: dict[str, Any]):
    """Rebuild a WorldDiT from a checkpoint's ``model_config``."""
    from worldsim.config import from_dict
    from worldsim.model import ModelConfig, WorldDiT

    if "model_config" not in meta:
        raise CheckpointError("checkpoint metadata has no model_config; it was not written by worldsim")
    return WorldDiT(from_dict(ModelConfig, meta["model_config"], "checkpoint model_config"))


def load_model(path: str | Path, prefix: str = "model.", *, role: str | None = None, device="cpu",
               dtype: torch.dtype | None = None):
    """Rebuild the model stored in ``path`` and load its weights. Returns (model, meta).

    ``prefix`` picks the weights (``model.`` or ``ema.``); ``role`` refuses a checkpoint of another
    role with a message that says what it is.
    """
    tensors, meta = load_checkpoint(path, prefix)
    if role is not None and meta.get("role") != role:
        raise CheckpointError(f"checkpoint '{path}' has role '{meta.get('role')}' (stage {meta.get('stage')}), "
                              f"expected '{role}'; pass the {role} checkpoint")
    model = build_model(meta)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint '{path}' does not fit its model_config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}; it was written by other code")
    model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), meta
