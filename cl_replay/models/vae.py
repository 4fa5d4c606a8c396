"""A VAE whose prior p(z) is a pluggable ``Prior`` module (standard normal by default).

Negative ELBO (CP-VAE paper eq. 2):  -E_q(z|x) log p(x|z) + KL(q(z|x) || p(z)),
with q(z|x) = N(m(x), diag s^2(x)), the log-variance clipped to [-6, 2].
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import gaussian_log_prob
from ..layers import glorot_linear, mlp
from ..likelihoods import make_likelihood
from ..priors import Prior, StandardNormalPrior
from .base import GenerativeModel, ModelConfig


class GaussianEncoder(nn.Module):
    """x -> (mean, log_var) of a diagonal Gaussian, through the 2x300 network (gated by default)."""

    def __init__(self, input_dim: int, hidden: int, latent_dim: int, hidden_layer: str = "gated") -> None:
        super().__init__()
        self.body = mlp(input_dim, hidden, kind=hidden_layer)
        self.head = glorot_linear(hidden, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.head(self.body(x)).chunk(2, dim=-1)
        return mean, F.hardtanh(log_var, -6.0, 2.0)


class VAE(GenerativeModel):
    """Encoder, prior and decoder composed; the prior decides what ``vae``, ``mog``, ... mean."""

    def __init__(self, config: ModelConfig, prior: Prior | Callable[[GaussianEncoder], Prior] | None = None) -> None:
        """``prior``: a Prior, a function building one from the model's encoder (the VampPrior), or
        None for the standard normal."""
        super().__init__()
        self.config = config
        self.encoder = GaussianEncoder(config.input_dim, config.hidden, config.latent_dim, config.hidden_layer)
        self.decoder = nn.Sequential(mlp(config.latent_dim, config.hidden, kind=config.hidden_layer), glorot_linear(config.hidden, config.input_dim))
        if prior is None:
            prior = StandardNormalPrior(config.latent_dim)
        self.prior = prior if isinstance(prior, Prior) else prior(self.encoder)
        self.likelihood = make_likelihood(config.likelihood, config.input_dim)

    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mean, log_var = self.encoder(x)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        reconstruction = -self.likelihood.log_prob(x, self.decoder(z))
        return {"reconstruction": reconstruction, "kl_z": self.prior.kl(mean, log_var, z)}

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x), z_s ~ q(z|x); returns (B, S)."""
        mean, log_var = self.encoder(x)
        z = mean + torch.exp(0.5 * log_var) * torch.randn(num_samples, *mean.shape, device=x.device)
        log_w = self.likelihood.log_prob(x, self.decoder(z)) + self.prior.log_prob(z) - gaussian_log_prob(z, mean, log_var)
        return log_w.t()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(self.prior.sample(n)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(self.encoder(x)[0]))
