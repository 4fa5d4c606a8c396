"""Continual learning with generative replay in Avalanche.

Modules (imported lazily: ``import strategies`` stays cheap, Avalanche loads on first use):

* ``streams``: ``build_stream`` (split_mnist, split_fashion_mnist, split_omniglot; class- or
  task-incremental) and ``stream_from_tensors`` over Avalanche's ``nc_benchmark``.
* ``generators`` / ``generator_core``: ``ReplayGenerator`` (an Avalanche ``Generator``), the
  category schedule that makes CP-VAE replay follow q(c), the generator's training loop.
* ``sources``: what is replayed: ``NoReplay``, ``BufferReplay``, ``GeneratorReplay``.
* ``plugin``: ``ReplayPlugin`` and ``CPVAEReplayPlugin``, replay as an Avalanche ``SupervisedPlugin``
  for any template (Naive, EWC, LwF, ...): the one implementation of replay.
* ``replay``: ``ReplayStrategy`` (an Avalanche ``SupervisedTemplate`` running on ``ReplayPlugin``
  with van de Ven's logit masks and tensor-sliced batches); ``MLPClassifier``.
* ``worker``: generator training in a parallel single-threaded process.
* ``config``: ``CLConfig`` and the checks of a run's names and numbers, without torch.
* ``run``: ``load_config``, ``run_experiment`` (the run folder, resumable after every experience).
* ``cli``: the ``run`` click command; ``summary``: ``summarize_cl_runs``.
"""
from __future__ import annotations

import importlib
import warnings

# Avalanche imports qpsolvers (for GEM), which warns at import when no QP solver backend is
# installed; no strategy here solves a QP, so the warning is only noise on every command.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

_EXPORTS = {
    "build_stream": "streams",
    "stream_from_tensors": "streams",
    "ContinualStream": "streams",
    "ExperienceTensors": "streams",
    "STREAMS": "streams",
    "ReplayGenerator": "generators",
    "GeneratorSchedule": "generators",
    "elbo_criterion": "generators",
    "ReplayPlugin": "plugin",
    "CPVAEReplayPlugin": "plugin",
    "ReplayStrategy": "replay",
    "MLPClassifier": "replay",
    "NoReplay": "sources",
    "BufferReplay": "sources",
    "GeneratorReplay": "sources",
    "CLConfig": "config",
    "load_config": "run",
    "run_experiment": "run",
    "available_generators": "run",
    "summarize_cl_runs": "summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
