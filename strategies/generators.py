"""Replay generators as Avalanche ``Generator`` s (see ``generator_core`` for the training loop,
schedules and the category sampling that makes CP-VAE replay follow q(c) exactly)."""
from __future__ import annotations

import torch
from torch import nn

from avalanche.models.generator import Generator

from .generator_core import (  # noqa: F401  (re-exported)
    CategorySchedule,
    GeneratorCore,
    GeneratorReplaySampler,
    GeneratorSchedule,
    GeneratorState,
    ReplayChunks,
    make_adam,
    refit_aggregated_posterior,
    train_generator,
)

__all__ = [
    "CategorySchedule",
    "GeneratorCore",
    "GeneratorReplaySampler",
    "GeneratorSchedule",
    "GeneratorState",
    "ReplayChunks",
    "ReplayGenerator",
    "elbo_criterion",
    "make_adam",
    "refit_aggregated_posterior",
    "train_generator",
]


class ReplayGenerator(GeneratorCore, Generator):
    """A ``cl_replay`` generative model behind Avalanche's ``Generator`` interface.

    ``generate(n)`` returns n flattened images in [0, 1] (decoder means); for a categorical model
    (CP-VAE) exactly ``category_counts(n)`` of each category, i.e. proportional to q(c) with
    largest-remainder rounding, in random order; ``condition=k`` samples category k only.
    ``get_features(x)`` is the encoder's representation. ``forward(x)`` is the scalar training loss
    (mean negative ELBO, KL weighted by ``self.beta``), so with :func:`elbo_criterion` the generator
    can be trained by Avalanche's ``VAETraining`` and plugged into Avalanche's ``GenerativeReplay``.
    """

    def __init__(self, model: nn.Module, name: str = "") -> None:
        GeneratorCore.__init__(self, model, name)


def elbo_criterion(x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Criterion for Avalanche's ``VAETraining``: ``ReplayGenerator.forward`` already is the loss."""
    return output
