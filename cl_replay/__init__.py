"""cl-replay: continual learning with generative replay from a CP-VAE (conditional-prior VAE).

The models load on first use (``from cl_replay import CPVAE``), so the command line starts without torch."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["CPVAE", "VAE", "GenerativeModel", "ModelConfig", "build_model"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
