"""Closed-form densities and divergences of diagonal Gaussians and categoricals.

These are the hot-loop versions of what ``torch.distributions`` computes (the tests check them
against it): plain tensor arithmetic, broadcasting over any leading shape, summing over the last
(latent) dimension.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z | mean, diag exp(log_var)) = -1/2 sum_d [log 2pi + log_var_d + (z_d - mean_d)^2 / var_d]."""
    return -0.5 * (LOG_2PI + log_var + (z - mean).pow(2) * torch.exp(-log_var)).sum(-1)


def gaussian_kl(
    mean_q: torch.Tensor, log_var_q: torch.Tensor, mean_p: torch.Tensor, log_var_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) for diagonal Gaussians, summed over the last dimension.

    KL = 1/2 sum_d [log var_p - log var_q + (var_q + (mean_q - mean_p)^2) / var_p - 1].
    """
    return 0.5 * (
        log_var_p - log_var_q + (torch.exp(log_var_q) + (mean_q - mean_p).pow(2)) * torch.exp(-log_var_p) - 1.0
    ).sum(-1)


def standard_normal_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, I)) = 1/2 sum_d [mean_d^2 + var_d - log var_d - 1]."""
    return 0.5 * (mean.pow(2) + torch.exp(log_var) - log_var - 1.0).sum(-1)


def categorical_kl_uniform(log_probs: torch.Tensor) -> torch.Tensor:
    """KL(Cat(pi) || Uniform(K)) = sum_k pi_k log pi_k + log K = log K - H(pi)   (CP-VAE eq. 9)."""
    num_categories = log_probs.shape[-1]
    return (log_probs.exp() * log_probs).sum(-1) + math.log(num_categories)


def gumbel_softmax_sample(logits: torch.Tensor, temperature: float, hard: bool = False) -> torch.Tensor:
    """A relaxed one-hot sample c = softmax((logits + g) / tau), g_k ~ Gumbel(0, 1) i.i.d. (Jang et al.
    2017; CP-VAE eq. 11), computed as exp of the log-space sample y - logsumexp(y), the reparameterised
    draw of torch.distributions' ``RelaxedOneHotCategorical``. ``hard`` returns the one-hot of its
    arg-max (an exact draw from Cat(softmax(logits)), no gradient).

    Unlike ``F.gumbel_softmax``, whose softmax backward depends on the number of CPU threads in the
    last bits, every operation here gives the same bits on 1 or 2 threads, so a generator may change
    its thread count mid-training without changing the run.
    """
    gumbels = -torch.empty_like(logits).exponential_().log()
    scores = (logits + gumbels) / temperature
    if hard:
        return F.one_hot(scores.argmax(-1), logits.shape[-1]).to(logits.dtype)
    return (scores - scores.logsumexp(-1, keepdim=True)).exp()


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x | sigmoid(logits)) summed over the last dimension (x may be grey: a cross-entropy)."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
