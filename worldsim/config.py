"""One config system: typed dataclasses filled from OmegaConf YAML plus ``key=value`` overrides.

A dataclass sits beside the class it configures; YAML only fills it. Unknown keys and wrong
types fail at load with the key named and, for typos, the nearest known key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Sequence, TypeVar

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
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found; pass a path such as configs/smoke.yaml")
    try:
        cfg = OmegaConf.load(p)
    except Exception as e:  # yaml parse errors come in many classes
        raise ConfigError(f"config file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, not a list")
    return cfg


def load_config(schema_cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                base: Any = None) -> T:
    """Fill ``schema_cls`` from defaults <- ``base`` (dict or dataclass) <- YAML ``path`` <- ``overrides``."""
    schema = OmegaConf.structured(schema_cls)
    cfg = schema
    if base is not None:
        cfg = _merge(cfg, base, "base config")
    if path is not None:
        cfg = _merge(cfg, load_yaml(path), str(path))
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides), "command-line overrides")
    return OmegaConf.to_object(cfg)


def from_dict(schema_cls: type[T], data: dict, where: str = "dict") -> T:
    return OmegaConf.to_object(_merge(OmegaConf.structured(schema_cls), data, where))


def to_dict(cfg: Any) -> dict:
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    return OmegaConf.to_container(cfg, resolve=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))
