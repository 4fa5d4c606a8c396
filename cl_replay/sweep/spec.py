"""Sweep specs: a command, a base config and axes whose Cartesian product gives the cells.

A spec is a YAML mapping::

    command: pretrain                  # or run
    config: cpvae_mnist                # optional: a file, or the name of an installed config
    base: {epochs: 1, warmup: 1}       # optional flat keys, as the command accepts them
    axes:                              # one cell per combination of one value of each axis
      model: [vae, cpvae]
      seed: [0, 1]

An axis value may also be a mapping that sets the axis key together with companion keys, for
rows that are not a product: ``model: [{model: vae}, {model: vampprior, categories: 500}]``.

A cell's config: the command's defaults < ``config`` (for ``run`` without one:
``configs/cl/<stream>.yaml``) < ``base`` < the cell's axis values < ``--data-root``. The cell
named ``model=vae,seed=0`` (its axis keys and values, in axis order) runs in
``<sweep folder>/model=vae,seed=0``. Its config hash is the SHA-256 of the resolved flat config
(``config.yaml`` of the run folder) without the keys that name places or how the machine is
used (:data:`UNHASHED`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_replay.config import ConfigError, as_flat_dict, build_configs, check_keys, read_yaml, resolve_config

COMMANDS = ("pretrain", "run")
SWEEP_KEYS = ("out", "progress")
"""Config keys the sweep sets for every cell (its folder, no progress bar)."""
UNHASHED = ("data_root", "out", "download", "device", "threads", "progress", "compile")
"""Config keys left out of a cell's hash: where the data and the folder are and how the machine is
used (as a resumed run may change them; ``compile`` runs the same loss through torch.compile), not
the protocol."""
_UNSAFE = re.compile(r"[^\w.+-]")


@dataclass
class SpecFile:
    """The keys of a spec file."""

    command: str = ""
    config: str | None = None
    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Spec:
    """A validated spec: every axis value is a mapping of the keys it sets."""

    path: Path
    command: str
    config: Path | None
    base: dict[str, Any]
    axes: dict[str, list[dict[str, Any]]]


@dataclass
class Cell:
    """One combination of axis values with its resolved config.

    ``configs`` is what the command's Python API takes: ``(ModelConfig, TrainConfig)`` for
    ``pretrain``, ``(CLConfig, ModelConfig)`` for ``run``.
    """

    name: str
    command: str
    values: dict[str, Any]
    configs: tuple
    config: dict[str, Any]
    config_hash: str

    def cpus(self, gpus_per_trial: float) -> int:
        """CPUs of its trial: 2 for a CL run on the CPU whose generator trains in a second
        process (``parallel_generator``), else 1 (one torch thread)."""
        if self.command == "run" and gpus_per_trial == 0:
            from strategies.run import BASELINES

            cl = self.configs[0]
            if cl.parallel_generator and cl.generator not in BASELINES and not cl.device.startswith("cuda"):
                return 2
        return 1


def config_types(command: str) -> tuple[type, ...]:
    """The dataclasses whose fields are the valid keys of ``command``."""
    from cl_replay.models.base import ModelConfig

    if command == "pretrain":
        from cl_replay.trainer import TrainConfig

        return ModelConfig, TrainConfig
    from strategies.run import CLConfig

    return CLConfig, ModelConfig


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> Spec:
    """Read and check a spec file: known top-level keys, a known command, axis and base keys that
    the command accepts (``ConfigError`` naming the key and the closest valid one). ``overrides``
    (``--set``) replace base keys; they may not set a key that an axis sets."""
    path = Path(resolve_config(path, "sweeps"))
    raw = read_yaml(path)
    check_keys(raw, SpecFile, source=str(path))
    spec = SpecFile(**raw)
    if spec.command not in COMMANDS:
        raise ConfigError(f"'command' in {path} must be one of {', '.join(COMMANDS)}, got {spec.command!r}")
    if not isinstance(spec.base, dict):
        raise ConfigError(f"'base' in {path} must be a mapping of config keys to values")
    if not isinstance(spec.axes, dict) or not spec.axes:
        raise ConfigError(f"'axes' in {path} must map at least one config key to a list of values")
    types = config_types(spec.command)
    _check_settable(spec.base, types, f"base of {path}")
    axes = {name: _axis_entries(name, values, types, f"axes of {path}") for name, values in spec.axes.items()}
    _check_disjoint(axes, path)
    overrides = overrides or {}
    _check_settable(overrides, types, "--set")
    for key in overrides:
        if any(key in entry for entries in axes.values() for entry in entries):
            raise ConfigError(f"--set {key}=... sets a key that the axes of {path} set; edit the spec instead")
    config = Path(resolve_config(spec.config, "pretrain" if spec.command == "pretrain" else "cl")) if spec.config else None
    if config is not None and not config.is_file():
        raise ConfigError(f"config file {spec.config} named in {path} not found (a path relative to the current "
                          "folder, or the name of an installed config)")
    return Spec(path, spec.command, config, {**spec.base, **overrides}, axes)


def _check_settable(values: dict[str, Any] | list[str], types: tuple[type, ...], source: str) -> None:
    for key in values:
        if key in SWEEP_KEYS:
            raise ConfigError(f"{key!r} in {source} is set by the sweep for every cell; remove it")
    check_keys(values, *types, source=source)


def _axis_entries(name: str, values: Any, types: tuple[type, ...], source: str) -> list[dict[str, Any]]:
    """The axis's values as mappings ({name: value} for a plain value), keys checked."""
    _check_settable([name], types, source)
    if not isinstance(values, list) or not values:
        raise ConfigError(f"axis {name!r} in {source} must be a non-empty list of values")
    entries = []
    for value in values:
        entry = value if isinstance(value, dict) else {name: value}
        if name not in entry:
            raise ConfigError(f"axis {name!r} in {source}: the entry {value!r} must set {name!r} itself")
        _check_settable(entry, types, source)
        if entry in entries:
            raise ConfigError(f"axis {name!r} in {source} lists {value!r} twice")
        entries.append(entry)
    return entries


def _check_disjoint(axes: dict[str, list[dict[str, Any]]], path: Path) -> None:
    owner: dict[str, str] = {}
    for name, entries in axes.items():
        for key in {key for entry in entries for key in entry}:
            if owner.setdefault(key, name) != name:
                raise ConfigError(f"key {key!r} is set by two axes of {path}: {owner[key]!r} and {name!r}")


def cell_name(values: dict[str, Any]) -> str:
    """``key=value,key=value``, with characters other than letters, digits and ``._+-`` as ``_``."""
    return ",".join(f"{key}={_UNSAFE.sub('_', str(value))}" for key, value in values.items())


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the flat config without :data:`UNHASHED` keys."""
    kept = {key: value for key, value in config.items() if key not in UNHASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def expand(spec: Spec, data_root: str | None = None) -> list[Cell]:
    """Every cell of the spec with its resolved config (``ConfigError`` for a value the command
    refuses, naming the cell)."""
    cells = []
    for combination in itertools.product(*spec.axes.values()):
        values = {key: value for entry in combination for key, value in entry.items()}
        name = cell_name(values)
        overrides = {**spec.base, **values, **({"data_root": data_root} if data_root else {})}
        configs = _resolve(spec, overrides, f"cell {name} of {spec.path}")
        config = as_flat_dict(*configs)
        cells.append(Cell(name, spec.command, values, configs, config, config_hash(config)))
    names = [cell.name for cell in cells]
    if len(set(names)) < len(names):
        raise ConfigError(f"two cells of {spec.path} share a folder name; make the axis values distinct")
    return cells


def _resolve(spec: Spec, overrides: dict[str, Any], source: str) -> tuple:
    if spec.command == "pretrain":
        from cl_replay.cli import _check_pretrain

        values = {**(read_yaml(spec.config) if spec.config else {}), **overrides}
        try:
            _check_pretrain(values)  # the names and numbers `cl-replay pretrain` checks
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from error
        return build_configs(values, *config_types("pretrain"), source=source)
    from strategies.run import CLConfig, load_config

    values = dict(overrides, progress=False)
    stream = values.pop("stream", CLConfig.stream)
    try:
        return load_config(stream, spec.config, values)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from error

