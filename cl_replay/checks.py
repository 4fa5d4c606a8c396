"""Checks of a command's names, numbers and folders before any work starts.

Nothing here imports torch, torchvision or Avalanche: a refused command answers within a fraction
of a second and leaves nothing behind. The name lists are the registries' (tests keep them equal
to ``cl_replay.models.MODELS``, ``cl_replay.data.DATASETS`` and ``strategies.streams.STREAMS``).
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any, Iterable

from .config import ConfigError

__all__ = [
    "BASELINES",
    "DATASETS",
    "DEVICES",
    "HIDDEN_LAYERS",
    "MODELS",
    "ON_NAN",
    "SCENARIOS",
    "STREAMS",
    "check_choice",
    "check_device",
    "check_numbers",
    "check_resumable",
    "check_run_folder",
    "is_writable",
]

MODELS = ("cpvae", "cp1", "vae", "mog", "vampprior", "flowprior", "hvae", "hvp")
DATASETS = ("mnist", "fashion_mnist", "omniglot")
STREAMS = ("split_mnist", "split_fashion_mnist", "split_omniglot")
BASELINES = ("none", "joint", "buffer")
SCENARIOS = ("class", "task")
DEVICES = ("auto", "cpu", "cuda")
ON_NAN = ("stop", "skip")
HIDDEN_LAYERS = ("gated", "relu")


def check_choice(key: str, value: Any, choices: Iterable[str]) -> None:
    """``value`` must be one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(choices)}")


def check_numbers(values: dict[str, Any], positive: Iterable[str] = (), non_negative: Iterable[str] = ()) -> None:
    """Every key of ``positive`` present in ``values`` is a number > 0, of ``non_negative`` >= 0."""
    for keys, smallest, wanted in ((positive, False, "positive"), (non_negative, True, "zero or more")):
        for key in keys:
            if key not in values or values[key] is None:
                continue
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key} must be a number, got {value!r}")
            if value < 0 or (value == 0 and not smallest):
                raise ConfigError(f"{key} must be {wanted}, got {value}")


def _cuda_absent() -> bool:
    """True when this machine certainly has no CUDA GPU (no NVIDIA device node on Linux, or macOS);
    otherwise torch decides once it is imported."""
    if sys.platform == "darwin":
        return True
    return sys.platform.startswith("linux") and not any(Path("/dev").glob("nvidia[0-9]*"))


def check_device(name: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``cuda`` on a machine without a GPU is an error."""
    if name not in DEVICES and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and _cuda_absent():
        raise ConfigError(f"device {name!r} asked for, but this machine has no CUDA GPU; use --device cpu or auto")


def is_writable(path: Path) -> bool:
    """Whether files may be created under ``path`` (or where it would be created).

    A directory without any write permission bit counts as read-only even for a
    superuser, who could otherwise write anywhere.
    """
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return False
    mode = existing.stat().st_mode
    return os.access(existing, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def check_run_folder(path: Path, state_file: str) -> None:
    """A new run folder: not a file, not an earlier run (it would be overwritten), and writable.
    ``state_file`` is what an earlier run there would have saved to be continued from."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder")
    if (path / "config.yaml").exists():
        hint = (f"continue it with --resume {path}" if (path / state_file).is_file() else
                f"it stopped before saving {state_file} to continue from: delete the folder")
        raise ConfigError(f"--out {path} already holds a run; {hint}, or choose another --out")
    if not is_writable(path):
        raise ConfigError(f"--out {path} is not writable; choose a folder you can write to")


def check_resumable(run_dir: Path, state_file: str) -> None:
    """``run_dir`` holds a run to continue: its ``config.yaml`` and the saved ``state_file``."""
    missing = [name for name in ("config.yaml", state_file) if not (Path(run_dir) / name).is_file()]
    if missing:
        raise ConfigError(f"--resume {run_dir}: nothing to continue there, {' and '.join(missing)} missing "
                          "(a run saves them as it goes)")
