"""Saving training state so that a run can go on after an interruption, even a SIGKILL: files are
written atomically (a temporary file renamed over the old one), and the random number generators'
states are part of the state, so a resumed run draws exactly what the uninterrupted one would."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "save_atomic", "set_rng_state"]


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` that never leaves a half-written ``path`` behind."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """The states of torch's CPU and CUDA generators, Python's ``random`` and NumPy's global generator."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
