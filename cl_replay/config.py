"""YAML configs mapped onto dataclasses, with flags overriding file keys.

A config file is flat: each key belongs to exactly one of the dataclasses a command uses. An
unknown key is an error naming it and the closest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, TypeVar

import yaml

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or flag that cannot be used as given."""


def packaged_config(relative: str) -> Traversable:
    """A YAML config shipped with cl-replay, e.g. ``cl/split_mnist.yaml``: read from the installed
    package ``cl_replay.configs``, which is the checkout's top-level ``configs/`` folder."""
    return resources.files("cl_replay.configs").joinpath(relative)


def resolve_config(given: str | Path, kind: str) -> str | Path | Traversable:
    """``given`` when it is a file; else the packaged config of that name (``cpvae_mnist`` or
    ``configs/pretrain/cpvae_mnist.yaml`` -> ``<kind>/cpvae_mnist.yaml``) when there is one."""
    if Path(given).is_file():
        return given
    packaged = packaged_config(f"{kind}/{Path(given).stem}.yaml")
    return packaged if packaged.is_file() else given


def read_yaml(path: str | Path | Traversable) -> dict[str, Any]:
    """The mapping in a YAML file; a clear error if it is missing or not a mapping."""
    path = Path(path) if isinstance(path, str) else path
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def check_keys(keys: Iterable[str], *types: type, source: str = "config") -> None:
    """A ``ConfigError`` for the first key that none of the dataclass ``types`` has, naming the
    closest valid key."""
    fields = [f.name for t in types for f in dataclasses.fields(t)]
    for key in keys:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key!r} in {source}{hint} (valid keys: {', '.join(sorted(set(fields)))})")


def build_configs(values: dict[str, Any], *types: type, source: str = "config") -> tuple:
    """Split flat ``values`` across the dataclass ``types`` (each key to the one type that has it).

    Values are converted to the type of the field's default (so YAML ``5e-4`` becomes a float).
    """
    check_keys(values, *types, source=source)
    built = []
    for t in types:
        kwargs = {}
        for f in dataclasses.fields(t):
            if f.name in values:
                kwargs[f.name] = _convert(values[f.name], f, source)
        built.append(t(**kwargs))
    return tuple(built)


def _convert(value: Any, field: dataclasses.Field, source: str) -> Any:
    default = field.default if field.default is not dataclasses.MISSING else None
    if value is None or default is None or isinstance(default, str) and isinstance(value, str):
        return value
    kind = type(default)
    try:
        if kind is bool and not isinstance(value, bool):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"key {field.name!r} in {source} must be a {kind.__name__}, got {value!r}") from error


def as_flat_dict(*configs: Any) -> dict[str, Any]:
    """The union of the dataclasses' fields: what a run folder's ``config.yaml`` holds."""
    flat: dict[str, Any] = {}
    for config in configs:
        flat.update(dataclasses.asdict(config))
    return flat
