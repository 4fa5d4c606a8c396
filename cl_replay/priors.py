"""Priors over the continuous latent z: small modules behind one interface.

Every unconditional prior offers ``log_prob(z)``, ``sample(n)`` and ``kl(mean, log_var, z)``, the
KL(q(z|x) || p(z)) term of the ELBO for a diagonal-Gaussian posterior: in closed form where one
exists, else the single-sample Monte Carlo estimate log q(z|x) - log p(z) at the posterior sample z.
The CP-VAE's conditional prior p(z|c) is indexed by the category instead.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import LOG_2PI, gaussian_log_prob, standard_normal_kl
from .layers import glorot_linear, mlp


class Prior(nn.Module):
    """Interface of an unconditional prior p(z) over R^latent_dim."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z), summed over the latent dimension; any leading shape."""
        raise NotImplementedError

    def sample(self, n: int) -> torch.Tensor:
        """n draws z ~ p(z), shape (n, latent_dim)."""
        raise NotImplementedError

    def kl(self, mean: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per example; by default the Monte Carlo estimate log q(z|x) - log p(z)."""
        return gaussian_log_prob(z, mean, log_var) - self.log_prob(z)


class StandardNormalPrior(Prior):
    """p(z) = N(0, I), with the closed-form KL 1/2 sum_d (mean^2 + var - log var - 1)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("_anchor", torch.zeros(()))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))

    def sample(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=self._anchor.device)

    def kl(self, mean: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return standard_normal_kl(mean, log_var)


class ConditionalGaussianPrior(nn.Module):
    """The CP-VAE prior p(z|c_k) = N(mu_k, diag sigma_k^2), k = 1..K (paper eq. 5).

    ``mean`` (K, D) and ``log_std`` (K, D) are trained parameters: empirical Bayes, section 3.1.1.
    The means start near the origin, mu_k ~ N(0, 0.1^2 I): from well-separated starting means one
    category has the smallest KL for every input and q(c|x) collapses onto it.
    """

    def __init__(self, categories: int, latent_dim: int) -> None:
        super().__init__()
        self.mean = nn.Parameter(0.1 * torch.randn(categories, latent_dim))
        self.log_std = nn.Parameter(torch.zeros(categories, latent_dim))

    @property
    def log_var(self) -> torch.Tensor:
        return 2.0 * self.log_std

    def log_prob(self, z: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        """log p(z|c): for integer ``category`` (matching z's leading shape), or for every category
        at once when ``category`` is None (z of shape (..., K, D) -> (..., K))."""
        if category is None:
            return gaussian_log_prob(z, self.mean, self.log_var)
        return gaussian_log_prob(z, self.mean[category], self.log_var[category])

    def sample(self, category: torch.Tensor) -> torch.Tensor:
        """z ~ p(z|c) for each integer category in ``category``; shape category.shape + (D,)."""
        mean, std = self.mean[category], self.log_std[category].exp()
        return mean + std * torch.randn_like(mean)


MIXTURE_CHUNK_ELEMENTS = 1 << 24


def uniform_mixture_log_prob(z: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """log (1/K sum_k N(z | m_k, diag v_k)) = logsumexp_k log N(z | m_k, diag v_k) - log K.

    ``z`` (..., D), ``means`` and ``log_vars`` (K, D) -> (...). This is the log of the mixture
    density, not the mean of the component log-densities (which is only a lower bound on it).
    The (..., K, D) intermediate is built for at most ``MIXTURE_CHUNK_ELEMENTS`` elements at a
    time, so that importance sampling with thousands of z and hundreds of components fits in memory.
    """
    flat = z.reshape(-1, z.shape[-1])
    rows = max(1, MIXTURE_CHUNK_ELEMENTS // (means.numel()))
    log_probs = [
        torch.logsumexp(gaussian_log_prob(chunk.unsqueeze(-2), means, log_vars), dim=-1)
        for chunk in flat.split(rows)
    ]
    return (torch.cat(log_probs) - math.log(means.shape[0])).reshape(z.shape[:-1])


class UniformGaussianMixturePrior(Prior):
    """p(z) = 1/K sum_k N(z | m_k, diag v_k) with equal weights; subclasses define the components.

    Sampling is ancestral: k ~ Uniform{1..K}, then z ~ N(m_k, diag v_k). The KL term is the Monte
    Carlo default of the interface, log q(z|x) - log p(z) at the posterior sample.
    """

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The components' means and log-variances, each (K, latent_dim)."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return uniform_mixture_log_prob(z, *self.components())

    def sample(self, n: int) -> torch.Tensor:
        means, log_vars = self.components()
        k = torch.randint(means.shape[0], (n,), device=means.device)
        return means[k] + torch.exp(0.5 * log_vars[k]) * torch.randn_like(means[k])


class MixtureOfGaussiansPrior(UniformGaussianMixturePrior):
    """The MG prior: p(z) = 1/K sum_k N(z | mu_k, diag sigma_k^2) with learned mu_k, log sigma_k.

    The means start at N(0, 1) draws and the log-standard deviations at 0 (unit variances).
    """

    def __init__(self, components: int, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.mean = nn.Parameter(torch.randn(components, latent_dim))
        self.log_std = nn.Parameter(torch.zeros(components, latent_dim))

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, 2.0 * self.log_std


class VampPrior(UniformGaussianMixturePrior):
    """The VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k), a mixture of the model's
    own variational posteriors at K learned pseudo-inputs u_k.

    u_k = hardtanh_[0,1](w_k), keeping the pseudo-inputs in the data range [0, 1]; the raw
    parameters w_k start at N(0.05, 0.01^2). ``encoder`` maps inputs to (mean, log_var) of q(z|.).
    It is owned (registered) by the model; this prior only keeps a reference outside the module
    tree, so the encoder's parameters appear once in ``state_dict`` and ``parameters()``.
    """

    def __init__(
        self,
        pseudo_inputs: int,
        input_dim: int,
        encoder: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        latent_dim: int,
    ) -> None:
        super().__init__(latent_dim)
        self.raw_pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(pseudo_inputs, input_dim))
        self._encoder = (encoder,)

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs u_k, (K, input_dim), in [0, 1]."""
        return F.hardtanh(self.raw_pseudo_inputs, 0.0, 1.0)

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encoder[0](self.pseudo_inputs)


class AffineCoupling(nn.Module):
    """A RealNVP affine coupling layer with binary mask b (dpVAE supplement eq. 2):

        forward:  y = b * z + (1 - b) * (z * exp(s(b * z)) + t(b * z)),
                  log|det dy/dz| = sum_l (1 - b_l) s_l(b * z),
        inverse:  z = b * y + (1 - b) * (y - t(b * y)) * exp(-s(b * y)),

    (b * y = b * z, so the inverse is exact). The log-scale s = tanh(.) * scale is bounded for
    stability, with a learned per-dimension scale (as RealNVP); s and t share one gated network.
    """

    def __init__(self, mask: torch.Tensor, hidden: int) -> None:
        super().__init__()
        dim = mask.shape[0]
        self.register_buffer("mask", mask.float())
        self.net = nn.Sequential(mlp(dim, hidden), glorot_linear(hidden, 2 * dim))
        self.scale = nn.Parameter(torch.ones(dim))

    def _scale_shift(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 - b) * s(b * z) and (1 - b) * t(b * z) from the kept part b * z."""
        raw_s, t = self.net(kept).chunk(2, dim=-1)
        free = 1.0 - self.mask
        return free * self.scale * torch.tanh(raw_s), free * t

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y and log|det dy/dz|."""
        kept = self.mask * z
        s, t = self._scale_shift(kept)
        return kept + (1.0 - self.mask) * z * torch.exp(s) + t, s.sum(-1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z and log|det dz/dy| (= minus the forward log-determinant at z)."""
        kept = self.mask * y
        s, t = self._scale_shift(kept)
        return kept + (1.0 - self.mask) * (y - t) * torch.exp(-s), -s.sum(-1)


class FlowPrior(Prior):
    """dpVAE's decoupled prior (Bhalodia, Lee, Elhabian): a bijection g = g^(1) o ... o g^(L) of
    affine couplings with alternating masks maps the latent z to z0 = g(z), and z0 ~ N(0, I):

        log p(z) = log N(g(z); 0, I) + log|det dg/dz|        (supplement eq. 1),

    sampled by the inverse, z = g^-1(z0) with z0 ~ N(0, I). The KL term is eq. (18),

        KL(q(z|x) || p(z)) = 1/2 [-log|Sigma(x)| - D + E_q ||g(z)||^2] - E_q log|det dg/dz|,

    with the posterior entropy in closed form and the expectations estimated at the posterior
    sample z; the constant -D/2 that eq. (18) drops is kept, so the negative ELBO is a true bound.
    """

    def __init__(self, latent_dim: int, layers: int = 6, hidden: int = 300) -> None:
        super().__init__(latent_dim)
        parity = torch.arange(latent_dim) % 2
        self.couplings = nn.ModuleList(AffineCoupling((parity + i) % 2, hidden) for i in range(layers))
        self.base = StandardNormalPrior(latent_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z0 = g(z) and log|det dg/dz|."""
        log_det = z.new_zeros(z.shape[:-1])
        for coupling in self.couplings:
            z, layer_log_det = coupling(z)
            log_det = log_det + layer_log_det
        return z, log_det

    def inverse(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = g^-1(z0) and log|det dg^-1/dz0|."""
        log_det = z0.new_zeros(z0.shape[:-1])
        for coupling in reversed(self.couplings):
            z0, layer_log_det = coupling.inverse(z0)
            log_det = log_det + layer_log_det
        return z0, log_det

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        z0, log_det = self(z)
        return self.base.log_prob(z0) + log_det

    def sample(self, n: int) -> torch.Tensor:
        return self.inverse(self.base.sample(n))[0]

    def kl(self, mean: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        entropy = 0.5 * (1.0 + LOG_2PI + log_var).sum(-1)
        return -entropy - self.log_prob(z)
