"""The two-level hierarchical VAE of Tomczak & Welling (2018): HVAE, and HVP with a VampPrior on z2.

Generative model:  z2 ~ p(z2),  z1 | z2 ~ p(z1|z2) = N(m(z2), diag s^2(z2)),  x | z1, z2 ~ p(x|z1,z2).
Inference model:   q(z2|x) = N(m(x), diag s^2(x)),  q(z1|x,z2) = N(m(x,z2), diag s^2(x,z2)).
Every Gaussian comes from a gated 2x300 network with its log-variance clipped to [-6, 2]; the two
conditioning inputs of q(z1|x,z2) and of the decoder are concatenated. Negative ELBO:

    -E_q log p(x|z1,z2) + KL(q(z2|x) || p(z2)) + E_q(z2|x) KL(q(z1|x,z2) || p(z1|z2)),

the first KL in closed form for the standard normal p(z2) (it does not depend on z1) and by its
single-sample Monte Carlo estimate for the VampPrior, the second in closed form at the sampled z2.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..distributions import gaussian_kl, gaussian_log_prob
from ..layers import glorot_linear, mlp
from ..likelihoods import make_likelihood
from ..priors import Prior, StandardNormalPrior, VampPrior
from .base import GenerativeModel, ModelConfig
from .vae import GaussianEncoder


def _draw(mean: torch.Tensor, log_var: torch.Tensor, *prefix: int) -> torch.Tensor:
    """z = mean + exp(log_var / 2) * eps with eps ~ N(0, I) of shape prefix + mean.shape."""
    return mean + torch.exp(0.5 * log_var) * torch.randn(*prefix, *mean.shape, device=mean.device)


class _PosteriorSample(NamedTuple):
    """Parameters of q(z2|x), q(z1|x,z2) and p(z1|z2) with the draws z2 ~ q(z2|x), z1 ~ q(z1|x,z2)."""

    mean2: torch.Tensor
    log_var2: torch.Tensor
    z2: torch.Tensor
    mean1: torch.Tensor
    log_var1: torch.Tensor
    z1: torch.Tensor
    prior_mean1: torch.Tensor
    prior_log_var1: torch.Tensor


class HVAE(GenerativeModel):
    """Two stochastic layers z1, z2 of ``latent_dim`` each; p(z2) is N(0, I), or with
    ``vampprior=True`` the VampPrior 1/K sum_k q(z2|u_k) over K = ``categories`` pseudo-inputs (HVP)."""

    def __init__(self, config: ModelConfig, vampprior: bool = False) -> None:
        super().__init__()
        self.config = config
        data, latent, hidden = config.input_dim, config.latent_dim, config.hidden
        self.encoder_z2 = GaussianEncoder(data, hidden, latent, config.hidden_layer)  # q(z2|x)
        self.encoder_z1 = GaussianEncoder(data + latent, hidden, latent, config.hidden_layer)  # q(z1|x,z2)
        self.conditional_prior_z1 = GaussianEncoder(latent, hidden, latent, config.hidden_layer)  # p(z1|z2)
        self.decoder = nn.Sequential(mlp(2 * latent, hidden, kind=config.hidden_layer), glorot_linear(hidden, data))  # p(x|z1,z2)
        self.prior: Prior = (
            VampPrior(config.categories, data, self.encoder_z2, latent) if vampprior else StandardNormalPrior(latent)
        )
        self.likelihood = make_likelihood(config.likelihood, data)

    def _posterior_sample(self, x: torch.Tensor, *prefix: int) -> _PosteriorSample:
        """One draw (z1, z2) ~ q(z1|x,z2) q(z2|x) per example, or ``prefix`` draws (shape prefix + (B, D))."""
        mean2, log_var2 = self.encoder_z2(x)
        z2 = _draw(mean2, log_var2, *prefix)
        mean1, log_var1 = self.encoder_z1(torch.cat([x.expand(*z2.shape[:-1], x.shape[-1]), z2], dim=-1))
        z1 = _draw(mean1, log_var1)
        return _PosteriorSample(mean2, log_var2, z2, mean1, log_var1, z1, *self.conditional_prior_z1(z2))

    def _decode(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters of p(x|z1,z2)."""
        return self.decoder(torch.cat([z1, z2], dim=-1))

    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        q = self._posterior_sample(x)
        return {
            "reconstruction": -self.likelihood.log_prob(x, self._decode(q.z1, q.z2)),
            "kl_z2": self.prior.kl(q.mean2, q.log_var2, q.z2),
            "kl_z1": gaussian_kl(q.mean1, q.log_var1, q.prior_mean1, q.prior_log_var1),
        }

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """log w_s = log p(x|z1,z2) + log p(z1|z2) + log p(z2) - log q(z1|x,z2) - log q(z2|x),
        (z1, z2)_s ~ q(z1|x,z2) q(z2|x); returns (B, S)."""
        q = self._posterior_sample(x, num_samples)
        log_w = (
            self.likelihood.log_prob(x, self._decode(q.z1, q.z2))
            + gaussian_log_prob(q.z1, q.prior_mean1, q.prior_log_var1)
            + self.prior.log_prob(q.z2)
            - gaussian_log_prob(q.z1, q.mean1, q.log_var1)
            - gaussian_log_prob(q.z2, q.mean2, q.log_var2)
        )
        return log_w.t()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Ancestral sampling: z2 ~ p(z2), z1 ~ p(z1|z2), x = the decoder's mean."""
        z2 = self.prior.sample(n)
        z1 = _draw(*self.conditional_prior_z1(z2))
        return self.likelihood.mean(self._decode(z1, z2))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at the posterior means: z2 = E q(z2|x), z1 = E q(z1|x,z2)."""
        z2, _ = self.encoder_z2(x)
        z1, _ = self.encoder_z1(torch.cat([x, z2], dim=-1))
        return self.likelihood.mean(self._decode(z1, z2))
