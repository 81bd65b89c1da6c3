"""One config system: typed dataclasses filled from OmegaConf YAML plus ``key=value`` overrides.

A dataclass sits beside the class it configures; YAML only fills it. Unknown keys and wrong
types fail at load with the key named and, for typos, the nearest known key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from worldsim.errors import ConfigError

T = TypeVar("T")


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(node._get_node(k), full + "."))
    return keys


def _suggest(bad_key: str, schema: DictConfig) -> str:
    known = _all_keys(schema)
    close = difflib.get_close_matches(bad_key, known, n=1, cutoff=0.5)
    if not close:  # compare the last component too: "model.dimm" -> "model.dim"
        last = bad_key.split(".")[-1]
        by_last = {k.split(".")[-1]: k for k in known}
        m = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.5)
        close = [by_last[m[0]]] if m else []
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(k for k in known if '.' not in k))}"


def _merge(schema: DictConfig, other: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, other)
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e).split("'")[1] if "'" in str(e) else str(e)
        raise ConfigError(f"unknown config key '{key}' in {where}{_suggest(str(key), schema)}") from None
    except ValidationError as e:
        key = getattr(e, "full_key", "?")
        msg = str(e).splitlines()[0]
        if "Incompatible value 'None'" in msg:  # `key=` parses as null, not as an empty string
            msg += f"; for an empty value write {key}=''"
        raise ConfigError(f"bad value for config key '{key}' in {where}: {msg}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config in {where}: {str(e).splitlines()[0]}") from None


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override '{o}' is not of the form key=value (e.g. train.steps=100)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {str(e).splitlines()[0]}") from None


def load_yaml(path: str | Path) -> DictConfig:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found; pass a path such as configs/smoke.yaml")
    try:
        text = p.read_text()
    except PermissionError:
        raise ConfigError(f"cannot read config file '{p}': permission denied; make it readable (chmod a+r)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file '{p}' ({e}); pass a YAML text file") from None
    try:
        top = yaml.safe_load(text)
    except Exception as e:  # yaml parse errors come in many classes
        raise ConfigError(f"config file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(top, (dict, type(None))):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys ('key: value' lines), not a "
                          f"{type(top).__name__} ({str(top)[:40]!r})")
    try:
        return OmegaConf.create(top or {})
    except Exception as e:
        raise ConfigError(f"config file '{p}' is not a valid config: {str(e).splitlines()[0]}") from None


def load_config(schema_cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                base: Any = None, upgrade: Callable[[dict, str], dict] | None = None) -> T:
    """Fill ``schema_cls`` from defaults <- ``base`` (dict or dataclass) <- YAML ``path`` <- ``overrides``.
    ``upgrade(yaml_dict, path)``, if given, brings a file written for an older schema up to date first."""
    schema = OmegaConf.structured(schema_cls)
    cfg = schema
    if base is not None:
        cfg = _merge(cfg, base, "base config")
    if path is not None:
        yaml = load_yaml(path)
        if upgrade is not None:
            yaml = upgrade(OmegaConf.to_container(yaml), str(path))
        cfg = _merge(cfg, yaml, str(path))
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides), "command-line overrides")
    obj = OmegaConf.to_object(cfg)
    check_values(obj, (f"{path} with the command-line overrides" if overrides else str(path)) if path is not None
                 else "the command-line overrides" if overrides else "the defaults")
    return obj


def from_dict(schema_cls: type[T], data: dict, where: str = "dict") -> T:
    obj = OmegaConf.to_object(_merge(OmegaConf.structured(schema_cls), data, where))
    check_values(obj, where)
    return obj


# ---------------------------------------------------------------------------------------------
# typed checks of numeric values: one table for every config dataclass
#
# Every number must be finite and (unless listed under NEGATIVE_OK) not negative. A key listed under
# POSITIVE must also be above 0 (a zero that means nothing: a batch of 0 clips, a 0 s stall limit);
# FRACTION keys lie in [0, 1]. Keys are field names, or Class.field where a name means different
# things in different classes (play's steps=0 means "the checkpoint's", training's cannot be 0).

POSITIVE = {"lr", "batch_size", "OptimConfig.steps", "clip_len", "resolution", "patch", "channels", "dim", "depth",
            "heads", "kv_heads", "num_actions", "mlp_ratio", "rope_theta_time", "rope_theta_space", "frameskip",
            "stall_timeout_s", "start_timeout_s", "idle_timeout_s", "max_session_s", "refresh_hz",
            "scale", "log_every", "ckpt_every", "num_levels", "temporal_every", "anchor_history",
            "chunk_size", "EngineConfig.chunk", "EngineConfig.window", "ModelConfig.chunk", "RolloutConfig.frames"}
FRACTION = {"p_uniform", "p_prefix", "action_dropout", "repeat_action_probability", "ema_decay", "target_decay",
            "student_point_prob", "min_lr_ratio", "betas"}
NEGATIVE_OK = {"seed": None, "PlayConfig.sink": -1, "PlayConfig.guidance": -1, "RunConfig.sample_every": -1}  # key -> lowest value (None: any)


def _rule_key(cls_name: str, name: str, table) -> str | None:
    for k in (f"{cls_name}.{name}", name):
        if k in table:
            return k
    return None


def _check_number(v, where_key: str, cls_name: str, name: str, default) -> str:
    """'' if ``v`` is allowed for the field, else what is wrong and what to pass."""
    import math

    hint = f" (default {default})" if default is not None and not isinstance(default, (list, dict)) else ""
    if isinstance(v, float) and not math.isfinite(v):
        return f"{v} is not a finite number; pass a number{hint}"
    lo_key = _rule_key(cls_name, name, NEGATIVE_OK)
    lo = NEGATIVE_OK[lo_key] if lo_key else 0
    if lo is not None and v < lo:
        return f"{v} is below {lo}; pass a value >= {lo}{hint}"
    if _rule_key(cls_name, name, POSITIVE) and v <= 0:
        return f"{v} means nothing here; pass a value > 0{hint}"
    if _rule_key(cls_name, name, FRACTION) and not 0 <= v <= 1:
        return f"{v} is outside [0, 1]; pass a fraction{hint}"
    return ""


def check_values(obj: Any, where: str = "config", prefix: str = "") -> None:
    """Refuse numbers that mean nothing in a filled config dataclass (see the tables above), with the key,
    the value, and what to pass instead. Nested dataclasses are checked with their dotted keys."""
    if not dataclasses.is_dataclass(obj):
        return
    cls_name = type(obj).__name__
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            check_values(v, where, key + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        values = v if isinstance(v, (list, tuple)) else [v]
        for x in values:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            why = _check_number(x, key, cls_name, f.name, default)
            if why:
                raise ConfigError(f"bad value for config key '{key}' in {where}: {why}")


def to_dict(cfg: Any) -> dict:
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    return OmegaConf.to_container(cfg, resolve=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))
