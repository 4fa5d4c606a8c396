"""CP-VAE: a VAE with data-dependent conditional priors (Lavda, Gregorova, Kalousis, ECAI 2020).

Generative model (eq. 3-5):  c ~ Uniform(K),  z | c_k ~ N(mu_k, diag sigma_k^2),  x | z, c ~ p(x | d(z, c)).
Inference model (eq. 6):     q(c|x) = Cat(pi(x)),  q(z|x,c) = N(m(h, c), diag s^2(h, c)),  h = e(x).
Negative ELBO (eq. 7-9):

    sum_k q(c_k|x) E_{q(z|x,c_k)}[-log p(x|z,c_k)] + KL(q(c|x) || p(c)) + sum_k q(c_k|x) KL(q(z|x,c_k) || p(z|c_k)),

both KL terms in closed form. Variants (``ModelConfig`` keys, compared in docs/clustering.md):

* ``category_estimator``: ``gumbel`` relaxes c by Gumbel-softmax at temperature tau (the paper,
  eq. 11) and estimates the first term with one draw; ``exact`` sums it over the K categories
  (one z draw and one decoder pass per category, no sampling of c): the same ELBO with a
  lower-variance gradient for q(c|x).
* ``decoder_sees_category``: p(x|z,c) = d([z; c]) (the paper's code) or p(x|z) = d(z) (GMVAE).
* ``posterior_sees_category``: q(z|x,c) affine in [h; c], or q(z|x,c) = q(z|x) shared by every
  category (the paper's eq. 6 writes m and s as functions of x and pi(x) only).
* ``prior_init``: ``normal`` draws mu_k ~ N(0, 0.1^2 I); ``kmeans`` and ``umap`` re-initialise the
  categories after ``prior_init_epoch`` epochs from a partition of the posterior means
  (``initialise_categories``): k-means on the means themselves, or the most likely of 10 Gaussian
  mixture fits to their UMAP embedding (``umap_partition``).
* ``category_anchor_weight``: from that restart to the end of epoch ``category_anchor_until`` only
  (by default the end of the paper's 100-epoch KL warm-up), a penalty w * CE(q(c|x), argmax q_0(c|x)) that holds q(c|x) to the restart's partition, q_0 being
  the encoder and category head frozen right after the restart; it is never part of the reported
  ELBO. Without it the partition drifts during the KL warm-up while the latent space reorganises.
* ``category_balance_weight``: during the first ``category_balance_epochs`` epochs only, a penalty
  w * KL(mean_batch q(c|x) || Uniform(K)) against collapse onto few categories; it is never part
  of the reported ELBO.

In evaluation mode the ``gumbel`` estimator draws c exactly (one-hot) from q(c|x), so the
single-sample negative ELBO is an unbiased estimate of the true bound (the paper's Table 1 quantity).
"""
from __future__ import annotations

import math
from itertools import repeat
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import ClusterError, kmeans2
from torch import nn
from tqdm.auto import tqdm

from ..distributions import categorical_kl_uniform, gaussian_log_prob, gumbel_softmax_sample
from ..layers import glorot_linear, mlp
from ..likelihoods import make_likelihood
from ..priors import ConditionalGaussianPrior
from .base import GenerativeModel, ModelConfig

MASKED_LOG_PROB = -1e4
"""Log-probability given to the categories a label rules out: exp() is exactly 0 in float32, and
unlike -inf it keeps q log q at 0 in the KL."""

ESTIMATORS = ("gumbel", "exact")
TEMPERATURE_SCHEDULES = ("exponential", "reference")
PRIOR_INITS = ("normal", "kmeans", "umap")


def best_kmeans(points: np.ndarray, k: int, restarts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, labels) of the run with the lowest mean squared distance to the assigned centroid
    among ``restarts`` runs of scipy's ``kmeans2`` with k-means++ seeding."""
    rng = np.random.default_rng(seed)
    best, best_distortion = None, np.inf
    for _ in range(restarts):
        try:
            centroids, labels = kmeans2(points, k, minit="++", seed=rng, missing="raise")
        except ClusterError:  # a cluster lost all its points: this restart does not count
            continue
        distortion = ((points - centroids[labels]) ** 2).sum(1).mean()
        if distortion < best_distortion:
            best, best_distortion = (centroids, labels), distortion
    if best is None:
        raise ValueError(f"k-means left a cluster empty in all {restarts} restarts: fewer distinct points than K = {k}?")
    return best


def umap_embedding(points: np.ndarray, seed: int, neighbours: int = 30, dimensions: int = 10) -> np.ndarray:
    """A ``dimensions``-dimensional UMAP embedding (McInnes et al. 2018; ``neighbours`` nearest
    neighbours, min_dist 0) of ``points``. It keeps the neighbourhood graph of the points and pulls
    its densely connected parts together, so that clusters which k-means on the points themselves
    would cut across come out as separate blobs (N2D, McConville et al. 2020)."""
    import warnings

    import umap

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden")
        return umap.UMAP(n_components=dimensions, n_neighbors=neighbours, min_dist=0.0,
                         random_state=seed).fit_transform(points)


def mixture_partition(embedding: np.ndarray, k: int, seed: int, restarts: int = 10) -> np.ndarray:
    """Labels of the K-component, full-covariance Gaussian mixture (scikit-learn) with the highest
    likelihood of ``embedding`` among ``restarts`` fits from different k-means initialisations.
    One fit can end in a local optimum that merges two neighbouring blobs and splits a third; the
    likelihood tells such a fit from a better one without labels."""
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(k, covariance_type="full", n_init=restarts, random_state=seed).fit_predict(embedding)


def umap_partition(points: np.ndarray, k: int, seed: int, restarts: int = 10) -> np.ndarray:
    """``mixture_partition`` of the ``umap_embedding`` of ``points``."""
    return mixture_partition(umap_embedding(points, seed), k, seed, restarts)


class CategoryConditionedGaussian(nn.Module):
    """q(z|x,c): mean and log-variance are affine in [h; c], log-variance clipped to [-6, 2].

    Being affine in c, the parameters for all K one-hot categories cost one matrix product:
    A h + b + W[:, k] for k = 1..K. With ``categories = 0`` the posterior ignores c: q(z|x,c) = q(z|x).
    """

    def __init__(self, hidden: int, categories: int, latent_dim: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.linear = glorot_linear(hidden + categories, 2 * latent_dim)

    def forward(self, h: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters for category weights ``c`` (B, K) -> (B, D); for every one-hot category at once
        if c is None -> (B, K, D), or (B, 1, D) when the posterior ignores c."""
        return self.from_base(self.base(h), c)

    def base(self, h: torch.Tensor) -> torch.Tensor:
        """A h + b, the part of the parameters every category shares: (B, 2D)."""
        return F.linear(h, self.linear.weight[:, : self.hidden], self.linear.bias)

    def from_base(self, base: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s parameters from ``base(h)``, which thus serves all categories and a drawn c alike."""
        weight_c = self.linear.weight[:, self.hidden :]
        if weight_c.shape[1] == 0:
            params = base.unsqueeze(1) if c is None else base
        else:
            params = base.unsqueeze(1) + weight_c.t() if c is None else base + c @ weight_c.t()
        mean, log_var = params.chunk(2, dim=-1)
        return mean, F.hardtanh(log_var, -6.0, 2.0)

    def kl_per_category(self, base: torch.Tensor, prior: ConditionalGaussianPrior) -> torch.Tensor:
        """KL(q(z|x,c_k) || p(z|c_k)) for every category k from ``base(h)``: (B, 2D) -> (B, K).

        With q's mean m + u_k (m from ``base``, u_k the category's column of the weights), clipped
        log-variance s_k and p(z|c_k) = N(mu_k, diag exp(l_k)), writing v_k = u_k - mu_k,

            KL_k = 1/2 sum_d [l_kd - s_kd + exp(s_kd - l_kd) + (m_d + v_kd)^2 exp(-l_kd) - 1],

        and the squared distance expands into matrix products over d:
        sum_d (m_d + v_kd)^2 exp(-l_kd) = (m^2) . exp(-l_k) + 2 m . (v_k exp(-l_k)) + v_k^2 . exp(-l_k).
        Only the clipped log-variances are formed per category (none when the posterior ignores c),
        not the K means: the same KL as ``gaussian_kl`` on ``from_base(base)`` with fewer (B, K, D)
        tensors in the forward and backward passes."""
        mean, log_var_base = base.chunk(2, dim=-1)
        precision = torch.exp(-prior.log_var)  # (K, D)
        weight_c = self.linear.weight[:, self.hidden :]
        if weight_c.shape[1] == 0:
            log_var = F.hardtanh(log_var_base, -6.0, 2.0)  # (B, D), every category's
            variance_terms = torch.exp(log_var) @ precision.t() - log_var.sum(-1, keepdim=True)
            offsets = -prior.mean
        else:
            mean_offsets, log_var_offsets = weight_c.t().chunk(2, dim=-1)  # (K, D) each
            log_var = F.hardtanh(log_var_base.unsqueeze(1) + log_var_offsets, -6.0, 2.0)  # (B, K, D)
            variance_terms = (torch.exp(log_var) * precision - log_var).sum(-1)
            offsets = mean_offsets - prior.mean
        squared_distance = (mean * mean) @ precision.t() + 2.0 * mean @ (offsets * precision).t() + (offsets * offsets * precision).sum(-1)
        return 0.5 * (prior.log_var.sum(-1) + variance_terms + squared_distance - mean.shape[-1])


class CPVAE(GenerativeModel):
    """CP-VAE with K categories; K = 1 is the paper's CP1 (one learned Gaussian prior, eq. 15)."""

    def __init__(self, config: ModelConfig, decoder: nn.Module | None = None) -> None:
        super().__init__()
        for key, value, allowed in (
            ("category_estimator", config.category_estimator, ESTIMATORS),
            ("temperature_schedule", config.temperature_schedule, TEMPERATURE_SCHEDULES),
            ("prior_init", config.prior_init, PRIOR_INITS),
        ):
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        self.config = config
        categories, latent, hidden = config.categories, config.latent_dim, config.hidden
        self.encoder = mlp(config.input_dim, hidden, kind=config.hidden_layer)
        # With K = 1 the category is certain: no logits to learn.
        self.category_logits = glorot_linear(hidden, categories) if categories > 1 else None
        self.posterior = CategoryConditionedGaussian(
            hidden, categories if config.posterior_sees_category else 0, latent
        )
        decoder_input = latent + (categories if config.decoder_sees_category else 0)
        self.decoder = decoder or nn.Sequential(mlp(decoder_input, hidden, kind=config.hidden_layer), glorot_linear(hidden, config.input_dim))
        self.prior = ConditionalGaussianPrior(categories, latent)
        self.likelihood = make_likelihood(config.likelihood, config.input_dim)
        self.register_buffer("aggregated_posterior", torch.full((categories,), 1.0 / categories))
        # q_0(c|x) of the restart, frozen; a submodule so that checkpoints keep it.
        self.category_anchor = None
        if config.category_anchor_weight > 0 and config.prior_init != "normal" and self.category_logits is not None:
            self.category_anchor = nn.Sequential(mlp(config.input_dim, hidden, kind=config.hidden_layer), glorot_linear(hidden, categories))
            self.category_anchor.requires_grad_(False)
            self.register_buffer("category_anchor_set", torch.tensor(False))  # True once a restart has set it
        self.temperature = config.temperature_start
        self.epoch = 0

    @property
    def categories(self) -> int:
        return self.config.categories

    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Gumbel-softmax temperature for 0-based ``epoch`` e:

        * ``exponential``: tau(e) = max(tau_min, tau_0 (tau_min / tau_0)^(e / E)), reaching tau_min
          after E = ``temperature_epochs`` epochs;
        * ``reference`` (the CP-VAE reference code, tau <- max(tau_min, tau exp(-3e-5 e)) once per
          epoch): tau(e) = max(tau_min, tau_0 exp(-3e-5 e (e + 1) / 2)).
        """
        c = self.config
        self.epoch = epoch
        if c.temperature_schedule == "reference":
            decayed = c.temperature_start * math.exp(-3e-5 * epoch * (epoch + 1) / 2)
        else:
            progress = epoch / c.temperature_epochs if c.temperature_epochs > 0 else 1.0
            decayed = c.temperature_start * (c.temperature_min / c.temperature_start) ** progress
        self.temperature = max(c.temperature_min, decayed)
        return {"temperature": self.temperature}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden state h = e(x) and the log-probabilities log q(c|x)."""
        h = self.encoder(x)
        if self.category_logits is None:
            return h, h.new_zeros(h.shape[0], 1)
        return h, F.log_softmax(self.category_logits(h), dim=-1)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Decoder output (likelihood parameters) for latent z and category weights c."""
        return self.decoder(torch.cat([z, c], dim=-1) if self.config.decoder_sees_category else z)

    def elbo_terms(self, x: torch.Tensor, category_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The per-example terms of the negative ELBO (eq. 7-9) and any active penalties.

        With labels, given as a (B, K) boolean ``category_mask`` of the categories each example's
        label y allows (every category belonging to one class, p(y|c) = 1 on its class), the terms
        are those of the negative ELBO of log p(x, y) = log sum_{c of y} p(c) p(x|c): the posterior
        over c is q(c|x,y), q(c|x) restricted to the allowed categories and renormalised. Then
        ``category_label_nll`` = -log sum_{c of y} q(c|x) also trains q(c|x) to tell the classes
        apart, for ``categorize`` and ``fit_generation`` without labels; it is not part of the ELBO."""
        h, log_pi = self.encode(x)
        label_nll = None
        if category_mask is not None:
            allowed = log_pi.masked_fill(~category_mask, MASKED_LOG_PROB)
            label_nll = -allowed.logsumexp(-1)
            log_pi = allowed + label_nll.unsqueeze(-1)
        pi = log_pi.exp()
        base = self.posterior.base(h)
        if self.config.category_estimator == "exact":
            mean_k, log_var_k = self.posterior.from_base(base)  # (B, K, D), or (B, 1, D) if q(z|x,c) = q(z|x)
            reconstruction = self._expected_reconstruction(x, pi, mean_k, log_var_k)
        else:
            c = gumbel_softmax_sample(log_pi, self.temperature, hard=not self.training)
            mean, log_var = self.posterior.from_base(base, c)
            z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
            reconstruction = -self.likelihood.log_prob(x, self.decode(z, c))
        terms = {
            "reconstruction": reconstruction,
            "kl_c": categorical_kl_uniform(log_pi),
            "kl_z": (pi * self.posterior.kl_per_category(base, self.prior)).sum(-1),
        }
        if self.training and self._anchored():
            with torch.no_grad():
                anchor_labels = self.category_anchor(x).argmax(-1)
            penalty = F.nll_loss(log_pi, anchor_labels, reduction="none") * self.config.category_anchor_weight
            terms["penalty_category_anchor"] = penalty
        if self.training and self.config.category_balance_weight > 0 and self.epoch < self.config.category_balance_epochs:
            penalty = categorical_kl_uniform(pi.mean(0).log()) * self.config.category_balance_weight
            terms["penalty_category_balance"] = penalty.expand(x.shape[0])
        if label_nll is not None:
            terms["category_label_nll"] = label_nll
        return terms

    def _anchored(self) -> bool:
        """Whether a restart has set the anchor and this epoch lies between the restart (at the end of
        1-based epoch ``prior_init_epoch``) and the end of 1-based epoch ``category_anchor_until``;
        ``self.epoch`` is 0-based. A model trained without restarts (continual learning, whose
        generator sets the epoch from its iteration count) is never anchored."""
        c = self.config
        return (self.category_anchor is not None and c.prior_init_epoch <= self.epoch < c.category_anchor_until
                and bool(self.category_anchor_set))

    def _expected_reconstruction(
        self, x: torch.Tensor, pi: torch.Tensor, mean_k: torch.Tensor, log_var_k: torch.Tensor
    ) -> torch.Tensor:
        """sum_k q(c_k|x) [-log p(x|z_k, c_k)], z_k ~ q(z|x,c_k): exact in c, one z draw per category.

        The decoder runs once per category unless neither it nor the posterior depends on c."""
        z = mean_k + torch.exp(0.5 * log_var_k) * torch.randn_like(mean_k)
        if self.config.decoder_sees_category:
            z = z.expand(-1, self.categories, -1)
        one_hot = torch.eye(self.categories, device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
        negative_log_px = -self.likelihood.log_prob(x.unsqueeze(1), self.decode(z, one_hot))
        return (pi * negative_log_px).sum(-1) if negative_log_px.shape[1] > 1 else negative_log_px[:, 0]

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Stratified importance sampling over the categories, summed exactly over c:

            p(x) = sum_k p(c_k) E_{q(z|x,c_k)} [ p(x|z,c_k) p(z|c_k) / q(z|x,c_k) ],

        with s = ceil(num_samples / K) draws per category. Because p(c_k) = 1/K, the mean of the
        s*K weights w = p(x|z,c_k) p(z|c_k) / q(z|x,c_k) is an unbiased estimate of p(x).
        Returns (B, s*K) log-weights.
        """
        per_category = math.ceil(num_samples / self.categories)
        h, _ = self.encode(x)
        mean_k, log_var_k = (t.expand(-1, self.categories, -1) for t in self.posterior(h))  # (B, K, D)
        z = mean_k + torch.exp(0.5 * log_var_k) * torch.randn(per_category, *mean_k.shape, device=x.device)
        one_hot = torch.eye(self.categories, device=x.device).expand(*z.shape[:-1], self.categories)
        log_px = self.likelihood.log_prob(x.unsqueeze(1), self.decode(z, one_hot))
        log_w = log_px + self.prior.log_prob(z) - gaussian_log_prob(z, mean_k, log_var_k)  # (s, B, K)
        return log_w.permute(1, 0, 2).reshape(x.shape[0], -1)

    def end_epoch(self, epoch: int, training_inputs: Callable[[], torch.Tensor]) -> dict[str, float]:
        """After epoch ``prior_init_epoch``, with ``prior_init`` kmeans or umap: ``initialise_categories``."""
        if self.config.prior_init != "normal" and epoch == self.config.prior_init_epoch and self.categories > 1:
            return self.initialise_categories(training_inputs())
        return {}

    def initialise_categories(
        self, x: torch.Tensor, fit_steps: int = 500, restarts: int = 10, seed: int = 0,
        labels: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Data-dependent restart of the categories (VaDE's route, Jiang et al. 2017):

        1. a partition of the posterior means m(x) = sum_k q(c_k|x) m(h(x), c_k) of the data ``x``
           into K groups: with ``prior_init = kmeans`` k-means (``best_kmeans``: the lowest
           distortion of ``restarts`` k-means++ runs), with ``umap`` the most likely of ``restarts``
           Gaussian mixture fits to their UMAP embedding (``umap_partition``); or the partition
           ``labels`` (values in 0..K-1) when given (``benchmarks/clustering_oracle.py`` starts from
           the true classes this way).
           The centroids are the groups' means;
        2. p(z|c_k) = N(centroid_k, diag(within-cluster variance_k + mean posterior variance));
        3. q(c|x): the category head alone is fitted to the cluster labels by ``fit_steps`` Adam
           steps of cross-entropy on the frozen encoder features.

        Returns the share of data in the largest cluster and the head's agreement with the labels."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            features, means, variances = [], [], []
            for batch in x.split(1000):
                h, log_pi = self.encode(batch)
                mean_k, log_var_k = self.posterior(h)
                weights = log_pi.exp().unsqueeze(-1)
                features.append(h)
                means.append((weights * mean_k).sum(1))
                variances.append((weights * log_var_k.exp()).sum(1))
            h, means, posterior_variance = torch.cat(features), torch.cat(means), torch.cat(variances).mean(0)
        if labels is None:
            points = means.double().cpu().numpy()
            tqdm.write(f"restarting the {self.categories} categories from a {self.config.prior_init} partition of "
                       f"{len(points)} posterior means" + (" (UMAP: minutes on a CPU)" if self.config.prior_init == "umap" else ""))
            if self.config.prior_init == "umap":
                labels = umap_partition(points, self.categories, seed, restarts)
            else:
                labels = best_kmeans(points, self.categories, restarts, seed)[1]
            labels = torch.as_tensor(labels, dtype=torch.long)
        labels = labels.to(x.device)
        with torch.no_grad():
            for k in range(self.categories):
                members = means[labels == k]
                if members.shape[0] == 0:  # an empty group leaves its category as it was
                    continue
                self.prior.mean[k].copy_(members.mean(0))
                spread = members.var(0, unbiased=False) if members.shape[0] > 1 else torch.zeros_like(posterior_variance)
                self.prior.log_std[k].copy_(0.5 * (spread + posterior_variance).clamp_min(1e-4).log())
        optimizer = torch.optim.Adam(self.category_logits.parameters(), lr=1e-2)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        for _ in range(fit_steps):
            index = torch.randint(0, h.shape[0], (1000,), device=x.device, generator=generator)
            loss = F.cross_entropy(self.category_logits(h[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            agreement = float((self.category_logits(h).argmax(-1) == labels).float().mean())
            if self.category_anchor is not None:
                self.category_anchor[0].load_state_dict(self.encoder.state_dict())
                self.category_anchor[1].load_state_dict(self.category_logits.state_dict())
                self.category_anchor_set.fill_(True)
        self.train(was_training)
        largest = float(torch.bincount(labels, minlength=self.categories).max()) / labels.shape[0]
        return {"init/largest_cluster_share": largest, "init/head_agreement": agreement}

    @torch.no_grad()
    def fit_generation(self, x: torch.Tensor, batch_size: int = 1000, category_mask: torch.Tensor | None = None) -> None:
        """q(c) = 1/n sum_i q(c|x_i), the aggregated posterior of eq. 14 over the given data; with a
        (n, K) ``category_mask`` of the categories each example's label allows, of q(c|x_i, y_i)."""
        total = torch.zeros_like(self.aggregated_posterior)
        masks = repeat(None) if category_mask is None else category_mask.split(batch_size)
        for batch, mask in zip(x.split(batch_size), masks):
            log_pi = self.encode(batch)[1]
            if mask is not None:
                log_pi = log_pi.masked_fill(~mask, MASKED_LOG_PROB).log_softmax(-1)
            total += log_pi.exp().sum(0)
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
