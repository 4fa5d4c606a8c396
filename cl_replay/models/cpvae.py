"""CP-VAE: a VAE with data-dependent conditional priors (Lavda, Gregorova, Kalousis, ECAI 2020).

Generative model (eq. 3-5):  c ~ Uniform(K),  z | c_k ~ N(mu_k, diag sigma_k^2),  x | z, c ~ p(x | d(z, c)).
Inference model (eq. 6):     q(c|x) = Cat(pi(x)),  q(z|x,c) = N(m(h, c), diag s^2(h, c)),  h = e(x).
Negative ELBO (eq. 7-9):

    -E_q log p(x|z,c) + KL(q(c|x) || p(c)) + sum_k q(c_k|x) KL(q(z|x,c_k) || p(z|c_k)),

both KL terms in closed form. During training c is relaxed by Gumbel-softmax at temperature tau;
in evaluation mode c is an exact one-hot draw from q(c|x), so the single-sample negative ELBO is
an unbiased estimate of the true bound (the paper's Table 1 quantity).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import categorical_kl_uniform, gaussian_log_prob
from ..layers import glorot_linear, gated_mlp
from ..likelihoods import make_likelihood
from ..priors import ConditionalGaussianPrior
from .base import GenerativeModel, ModelConfig


class CategoryConditionedGaussian(nn.Module):
    """q(z|x,c): mean and log-variance are affine in [h; c], log-variance clipped to [-6, 2].

    Being affine in c, the parameters for all K one-hot categories cost one matrix product:
    A h + b + W[:, k] for k = 1..K.
    """

    def __init__(self, hidden: int, categories: int, latent_dim: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.linear = glorot_linear(hidden + categories, 2 * latent_dim)

    def forward(self, h: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters for category weights ``c`` (B, K); for every one-hot category (B, K, D) if c is None."""
        weight_h, weight_c = self.linear.weight[:, : self.hidden], self.linear.weight[:, self.hidden :]
        base = F.linear(h, weight_h, self.linear.bias)
        params = base.unsqueeze(1) + weight_c.t() if c is None else base + c @ weight_c.t()
        mean, log_var = params.chunk(2, dim=-1)
        return mean, F.hardtanh(log_var, -6.0, 2.0)


class CPVAE(GenerativeModel):
    """CP-VAE with K categories; K = 1 is the paper's CP1 (one learned Gaussian prior, eq. 15)."""

    def __init__(self, config: ModelConfig, decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        categories, latent, hidden = config.categories, config.latent_dim, config.hidden
        self.encoder = gated_mlp(config.input_dim, hidden)
        # With K = 1 the category is certain: no logits to learn.
        self.category_logits = glorot_linear(hidden, categories) if categories > 1 else None
        self.posterior = CategoryConditionedGaussian(hidden, categories, latent)
        self.decoder = decoder or nn.Sequential(
            gated_mlp(latent + categories, hidden), glorot_linear(hidden, config.input_dim)
        )
        self.prior = ConditionalGaussianPrior(categories, latent)
        self.likelihood = make_likelihood(config.likelihood, config.input_dim)
        self.register_buffer("aggregated_posterior", torch.full((categories,), 1.0 / categories))
        self.temperature = config.temperature_start

    @property
    def categories(self) -> int:
        return self.config.categories

    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Gumbel-softmax temperature: tau(epoch) = max(tau_min, tau_0 * (tau_min / tau_0)^(epoch / E)),
        an exponential decay from tau_0 that reaches tau_min after E = ``temperature_epochs`` epochs."""
        c = self.config
        progress = epoch / c.temperature_epochs if c.temperature_epochs > 0 else 1.0
        self.temperature = max(c.temperature_min, c.temperature_start * (c.temperature_min / c.temperature_start) ** progress)
        return {"temperature": self.temperature}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden state h = e(x) and the log-probabilities log q(c|x)."""
        h = self.encoder(x)
        if self.category_logits is None:
            return h, h.new_zeros(h.shape[0], 1)
        return h, F.log_softmax(self.category_logits(h), dim=-1)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Decoder output (likelihood parameters) for latent z and category weights c."""
        return self.decoder(torch.cat([z, c], dim=-1))

    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, log_pi = self.encode(x)
        c = F.gumbel_softmax(log_pi, tau=self.temperature, hard=not self.training)
        mean, log_var = self.posterior(h, c)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        reconstruction = -self.likelihood.log_prob(x, self.decode(z, c))
        mean_k, log_var_k = self.posterior(h)
        kl_z = (log_pi.exp() * self.prior.kl(mean_k, log_var_k)).sum(-1)
        return {"reconstruction": reconstruction, "kl_c": categorical_kl_uniform(log_pi), "kl_z": kl_z}

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Stratified importance sampling over the categories, summed exactly over c:

            p(x) = sum_k p(c_k) E_{q(z|x,c_k)} [ p(x|z,c_k) p(z|c_k) / q(z|x,c_k) ],

        with s = ceil(num_samples / K) draws per category. Because p(c_k) = 1/K, the mean of the
        s*K weights w = p(x|z,c_k) p(z|c_k) / q(z|x,c_k) is an unbiased estimate of p(x).
        Returns (B, s*K) log-weights.
        """
        per_category = math.ceil(num_samples / self.categories)
        h, _ = self.encode(x)
        mean_k, log_var_k = self.posterior(h)  # (B, K, D)
        z = mean_k + torch.exp(0.5 * log_var_k) * torch.randn(per_category, *mean_k.shape, device=x.device)
        one_hot = torch.eye(self.categories, device=x.device).expand(*z.shape[:-1], self.categories)
        log_px = self.likelihood.log_prob(x.unsqueeze(1), self.decode(z, one_hot))
        log_w = log_px + self.prior.log_prob(z) - gaussian_log_prob(z, mean_k, log_var_k)  # (s, B, K)
        return log_w.permute(1, 0, 2).reshape(x.shape[0], -1)

    @torch.no_grad()
    def fit_generation(self, x: torch.Tensor, batch_size: int = 1000) -> None:
        """q(c) = 1/n sum_i q(c|x_i), the aggregated posterior of eq. 14 over the given data."""
        total = torch.zeros_like(self.aggregated_posterior)
        for batch in x.split(batch_size):
            total += self.encode(batch)[1].exp().sum(0)
        self.aggregated_posterior.copy_(total / x.shape[0])

    def category_counts(self, n: int, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-category sample counts summing to n, proportional to q(c) (largest-remainder rounding)."""
        weights = self.aggregated_posterior if weights is None else weights
        expected = weights / weights.sum() * n
        counts = expected.floor().long()
        remainder = n - int(counts.sum())
        if remainder > 0:
            counts[torch.topk(expected - counts, remainder).indices] += 1
        return counts

    @torch.no_grad()
    def sample(self, n: int, category: int | None = None, counts: torch.Tensor | None = None) -> torch.Tensor:
        """n examples: c ~ q(c) (paper section 5), or the given ``category``, or exactly ``counts[k]``
        examples of each category k (then n is ignored); z ~ p(z|c); x = decoder mean."""
        return self.sample_with_categories(n, category, counts)[0]

    @torch.no_grad()
    def sample_with_categories(
        self, n: int, category: int | None = None, counts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``sample``, also returning the category of each example."""
        device = self.aggregated_posterior.device
        if counts is not None:
            c = torch.repeat_interleave(torch.arange(self.categories, device=device), counts.to(device))
        elif category is not None:
            c = torch.full((n,), category, dtype=torch.long, device=device)
        else:
            c = torch.multinomial(self.aggregated_posterior, n, replacement=True)
        z = self.prior.sample(c)
        logits = self.decode(z, F.one_hot(c, self.categories).to(z.dtype))
        return self.likelihood.mean(logits), c

    @torch.no_grad()
    def sample_rows(self, per_row: int, max_rows: int = 10) -> torch.Tensor:
        """One row per category, the ``max_rows`` most probable under q(c), most probable first
        (a plain grid when there is a single category)."""
        if self.categories == 1:
            return super().sample_rows(per_row, max_rows)
        order = torch.argsort(self.aggregated_posterior, descending=True)[:max_rows]
        return torch.stack([self.sample(per_row, category=int(k)) for k in order])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        h, log_pi = self.encode(x)
        c = F.one_hot(log_pi.argmax(-1), self.categories).to(x.dtype)
        mean, _ = self.posterior(h, c)
        return self.likelihood.mean(self.decode(mean, c))

    @torch.no_grad()
    def categorize(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[1].argmax(-1)
