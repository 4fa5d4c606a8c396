"""The interface every generative model offers to the trainer, the evaluator and the replay code.

A model computes the per-example terms of its negative ELBO; the trainer only weighs the KL terms
by the warm-up beta, so it never needs to know what is inside a model.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..settings import ModelConfig  # noqa: F401  (re-exported: models build from it)


class GenerativeModel(nn.Module):
    """Base class: subclasses implement ``elbo_terms``, ``log_importance_weights`` and ``sample``."""

    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example terms whose sum is the negative ELBO: ``reconstruction`` = -E_q log p(x|.)
        and one or more KL terms whose names start with ``kl``."""
        raise NotImplementedError

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """(B, S) log-weights whose log-mean-exp over S is an unbiased-in-p(x) estimate of log p(x)."""
        raise NotImplementedError

    def sample(self, n: int) -> torch.Tensor:
        """n new examples: the decoder's mean for latents drawn from the model's generative prior."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at the posterior mean (and most probable category) of each example."""
        raise NotImplementedError

    def sample_rows(self, per_row: int, max_rows: int = 10) -> torch.Tensor:
        """A grid of samples, shape (rows, per_row, D); models with categories give one row per category."""
        return self.sample(per_row * max_rows).view(max_rows, per_row, -1)

    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Advance the model's own annealing schedules (if any); returns their values for logging."""
        return {}

    def end_epoch(self, epoch: int, training_inputs: Callable[[], torch.Tensor]) -> dict[str, float]:
        """Data-dependent steps a model takes after (1-based) ``epoch``, e.g. the CP-VAE's k-means
        initialisation of its categories, with ``training_inputs()`` giving the training set as
        the model sees it (called only when needed); returns values for logging. A no-op by default."""
        return {}

    def fit_generation(self, x: torch.Tensor) -> None:
        """Prepare generation from training data (the CP-VAE's aggregated posterior); a no-op by default."""

    def categorize(self, x: torch.Tensor) -> torch.Tensor | None:
        """The most probable latent category of each example, or None for models without categories."""
        return None

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean of reconstruction + beta * KL (+ any ``penalty`` terms) over the batch, and the
        detached batch means of every term together with ``neg_elbo`` (the negative ELBO at
        beta = 1, which never includes a penalty: penalties are temporary training aids)."""
        terms = self.elbo_terms(x)
        kl = sum(value for name, value in terms.items() if name.startswith("kl"))
        penalty = sum(value for name, value in terms.items() if name.startswith("penalty"))
        loss = (terms["reconstruction"] + beta * kl + penalty).mean()
        logged = {name: value.detach().mean() for name, value in terms.items()}
        logged["neg_elbo"] = (terms["reconstruction"] + kl).detach().mean()
        return loss, logged
