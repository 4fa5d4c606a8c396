"""Observation models p(x | decoder output): Bernoulli for binary pixels, Gaussian for grey data."""
from __future__ import annotations

import torch
from torch import nn

from .distributions import LOG_2PI, bernoulli_log_prob


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d | sigmoid(logit_d)); the decoder outputs logits."""

    def log_prob(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(x, logits)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(logits))


class GaussianLikelihood(nn.Module):
    """p(x|z) = N(x | d(z), diag sigma^2) with a learned per-dimension log sigma (clipped to [-4.5, 1])."""

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.log_std = nn.Parameter(torch.full((data_dim,), -1.0))

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        log_std = self.log_std.clamp(-4.5, 1.0)
        return -(0.5 * LOG_2PI + log_std + 0.5 * ((x - mean) * torch.exp(-log_std)).pow(2)).sum(-1)

    def mean(self, mean: torch.Tensor) -> torch.Tensor:
        return mean

    def sample(self, mean: torch.Tensor) -> torch.Tensor:
        return mean + self.log_std.clamp(-4.5, 1.0).exp() * torch.randn_like(mean)


def make_likelihood(name: str, data_dim: int) -> nn.Module:
    """``bernoulli`` (binary or binarised data) or ``gaussian`` (grey data)."""
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(data_dim)
    raise ValueError(f"unknown likelihood {name!r}: choose 'bernoulli' or 'gaussian'")
