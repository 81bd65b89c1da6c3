"""Self-describing safetensors checkpoints.

A checkpoint is one ``.safetensors`` file: tensors under prefixes (``model.``, ``ema.``, ...) and
string metadata that rebuilds everything: ``format``, ``role`` (teacher, student, fake_score),
``stage`` and ``step``, ``model_config`` (JSON), ``env_id`` and ``action_meanings`` (JSON),
``resolution``, ``code_version``, ``frame_period`` (the game time one frame spans, from the training
data: ``worldsim.gametime``; a file written before it existed gets it from its data or a printed
default), ``palette`` (the game's colours in the training frames, which the engine snaps to:
``worldsim.data.palette``; absent for a game not drawn from one), plus whatever the writer adds
(``engine``, ``train_config``, ``context_frames``...). Writes are atomic (temp file + rename), so a
crash never leaves a half-written checkpoint under the real name.
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
from worldsim.data.palette import Palette
from worldsim.errors import CheckpointError, check_readable

FORMAT = "worldsim-ckpt-1"


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    smeta = {"format": FORMAT, "code_version": __version__}
    for k, v in meta.items():
        smeta[k] = v if isinstance(v, str) else json.dumps(v)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    smeta[CHECKSUM_KEY] = checksum(tensors, smeta)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=smeta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600: a kiosk or CI user must be able to read a shipped model
    os.replace(tmp, path)
    return path


CHECKSUM_KEY = "checksum"  # sha256 over the metadata and every tensor, written by save_checkpoint


def checksum(tensors: dict[str, torch.Tensor], smeta: dict[str, str]) -> str:
    """What ``save_checkpoint`` records under ``checksum``: a sha256 over the string metadata (the
    checksum itself left out) and every tensor's name, dtype, shape and bytes, in sorted order. The
    safetensors format has none of its own, so a flipped byte in a weight would otherwise load."""
    h = hashlib.sha256()
    for k in sorted(smeta):
        if k != CHECKSUM_KEY:
            h.update(f"{k}={smeta[k]}\0".encode())
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + h.hexdigest()


def _read_raw(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({e}); re-export or retrain it") from None


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint, JSON values decoded; raises CheckpointError with the fix."""
    path = _existing(path)
    return _decode_meta(path, _read_raw(path))


def _decode_meta(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a worldsim checkpoint (format={raw.get('format')!r}); "
                              f"pass a file written by 'worldsim train'")
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    _check_meta(path, meta)
    if "model_config" in meta:  # in today's fields; a model of a removed form is refused
        from worldsim.model.dit import upgrade_model_config

        meta["model_config"] = upgrade_model_config(meta["model_config"], str(path))
    return meta


# metadata keys with a fixed JSON type: key -> (check, what it must be)
_META_TYPES = {
    "model_config": (lambda v: isinstance(v, dict), "a JSON mapping of model settings"),
    "engine": (lambda v: v is None or isinstance(v, dict), "a JSON mapping of engine settings"),
    "action_meanings": (lambda v: v is None or (isinstance(v, list) and bool(v) and all(isinstance(m, str) for m in v)),
                        "a JSON list of action names"),
    "env_id": (lambda v: v is None or isinstance(v, str), "a game id string"),
}


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    for key, (ok, what) in _META_TYPES.items():
        if key in meta and not ok(meta[key]):
            raise CheckpointError(f"checkpoint '{path}': metadata '{key}' is not {what} (got {str(meta[key])[:60]!r}); "
                                  f"the file is damaged or was edited by hand: re-export or retrain it")


def load_checkpoint(path: str | Path, prefix: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta); with ``prefix`` only those tensors, prefix stripped. A file that records a
    checksum (every file ``save_checkpoint`` writes) is refused when its bytes no longer match it."""
    path = _existing(path)
    raw = _read_raw(path)
    meta = _decode_meta(path, raw)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({e}); re-export or retrain it") from None
    if CHECKSUM_KEY in raw and checksum(tensors, raw) != raw[CHECKSUM_KEY]:
        raise CheckpointError(f"checkpoint '{path}' fails its checksum: its bytes changed after it was written (a "
                              f"damaged copy or an edit); copy it again or re-export it")
    if prefix is not None:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not tensors:
            raise CheckpointError(f"checkpoint '{path}' holds no '{prefix}*' tensors; it may be from another stage")
    return tensors, meta


def _existing(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' not found; pass --checkpoint PATH to an existing .safetensors file")
    check_readable(p, "checkpoint", CheckpointError)
    return p


def file_hash(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


MAX_TOKENS_PER_FRAME = 1 << 16  # 256x256 patches: far beyond any model this runtime plays or trains


def model_config(meta: dict[str, Any], path: str | Path = "checkpoint"):
    """The checkpoint's ``ModelConfig``, checked; CheckpointError naming the file otherwise."""
    from worldsim.config import from_dict
    from worldsim.errors import ConfigError
    from worldsim.model import ModelConfig

    if "model_config" not in meta:
        raise CheckpointError(f"checkpoint '{path}' has no model_config metadata; it was not written by worldsim")
    _check_meta(Path(str(path)), {"model_config": meta["model_config"]})
    try:
        cfg = from_dict(ModelConfig, meta["model_config"], f"checkpoint '{path}' model_config")
        cfg.validate()
    except ConfigError as e:
        raise CheckpointError(f"{e}; the file is damaged or was edited by hand: re-export or retrain it") from None
    return cfg


def build_model(meta: dict[str, Any], path: str | Path = "checkpoint"):
    """Rebuild a WorldDiT from a checkpoint's ``model_config`` (fresh weights)."""
    from worldsim.model import WorldDiT

    return WorldDiT(model_config(meta, path))


def load_weights(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | Path = "checkpoint"):
    """The model of ``meta['model_config']`` with ``tensors`` (prefix stripped) loaded: the one place
    where a checkpoint's weights meet a model. Everything is checked before anything is allocated or
    copied, each with one line naming the file, the tensor and the fix: a config too large for the
    tensors in the file (a damaged size would otherwise reach the allocator), missing or unexpected
    tensors, wrong shapes, integer weights, NaN or infinite values."""
    from worldsim.model import WorldDiT

    cfg = model_config(meta, path)
    palette = Palette.from_meta(meta["palette"], f"checkpoint '{path}'") if meta.get("palette") is not None else None
    have = sum(t.numel() for t in tensors.values())
    tokens = (cfg.resolution // cfg.patch) ** 2
    # A lower bound on the model's parameters: the adaLN projection alone is (6 depth + 2) dim^2.
    floor = (6 * cfg.depth + 2) * cfg.dim * cfg.dim + (cfg.num_actions + 1) * cfg.dim
    if floor > have or tokens > MAX_TOKENS_PER_FRAME:
        raise CheckpointError(f"checkpoint '{path}': model_config (dim {cfg.dim}, depth {cfg.depth}, resolution "
                              f"{cfg.resolution}, patch {cfg.patch}) describes a model of at least {floor:,} parameters "
                              f"and {tokens:,} tokens a frame, but the file holds {have:,} values; its model_config "
                              f"is damaged: re-export or retrain it")
    with torch.device("meta"):  # shapes and dtypes without allocating
        want = WorldDiT(cfg).state_dict()
    missing = [k for k in want if k not in tensors]
    unexpected = [k for k in tensors if k not in want]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint '{path}' does not fit its model_config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}; it was written by other code")
    for k, w in want.items():
        t = tensors[k]
        if tuple(t.shape) != tuple(w.shape):
            raise CheckpointError(f"checkpoint '{path}': tensor '{k}' has shape {tuple(t.shape)} but its model_config "
                                  f"makes {tuple(w.shape)}; the file is damaged or was edited: re-export or retrain it")
        if w.is_floating_point() and not t.is_floating_point():
            raise CheckpointError(f"checkpoint '{path}': tensor '{k}' holds {str(t.dtype).replace('torch.', '')} "
                                  f"values where weights are floating point (fp32, bf16 or fp16); re-export it "
                                  f"without quantising")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"checkpoint '{path}': tensor '{k}' holds {bad} NaN or infinite values (the model "
                                  f"would draw blank frames); use an earlier checkpoint of the run or retrain")
    model = WorldDiT(cfg)
    model.load_state_dict(tensors, strict=True)
    model.palette = palette
    return model


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
    model = load_weights(tensors, meta, path).to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), meta
