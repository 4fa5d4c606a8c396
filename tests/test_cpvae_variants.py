"""CP-VAE variants (exact sum over c, decoder / posterior without c, k-means initialisation,
temperature schedules, the category-balance penalty): each checked against the definitions of the
ELBO terms computed independently with torch.distributions."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, kl_divergence

from cl_replay.evaluation import cluster_accuracy, elbo_terms
from cl_replay.models import CPVAE, ModelConfig
from test_cpvae import diag_normal, reference_kl_terms, small_cpvae

VARIANTS = {
    "gumbel": {},
    "exact": dict(category_estimator="exact"),
    "exact_decoder_z": dict(category_estimator="exact", decoder_sees_category=False),
    "exact_shared_posterior": dict(category_estimator="exact", decoder_sees_category=False, posterior_sees_category=False),
    "exact_shared_posterior_decoder_c": dict(category_estimator="exact", posterior_sees_category=False),
    "gumbel_shared_posterior": dict(posterior_sees_category=False),
}


@torch.no_grad()
def reference_reconstruction(model: CPVAE, x: torch.Tensor, draws: int) -> torch.Tensor:
    """sum_k q(c_k|x) E_{q(z|x,c_k)}[-log p(x|z,c_k)] by Monte Carlo over z for every category,
    built from torch.distributions and the model's networks only."""
    h = model.encoder(x)
    pi = Categorical(logits=model.category_logits(h)).probs
    total = torch.zeros(x.shape[0])
    for k in range(model.categories):
        one_hot = F.one_hot(torch.full((x.shape[0],), k), model.categories).float()
        mean, log_var = model.posterior(h, one_hot)
        z = diag_normal(mean, log_var).sample((draws,))
        decoder_input = torch.cat([z, one_hot.expand(draws, -1, -1)], -1) if model.config.decoder_sees_category else z
        expected = -Bernoulli(logits=model.decoder(decoder_input)).log_prob(x).sum(-1).mean(0)
        total += pi[:, k] * expected
    return total


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_estimates_the_same_reconstruction_term(variant):
    """The exact sum over c and the (evaluation-mode) Gumbel draw are both unbiased for
    sum_k q(c_k|x) E_q(z|x,c_k)[-log p(x|z,c_k)]."""
    torch.manual_seed(0)
    model = small_cpvae(**VARIANTS[variant]).eval()
    x = torch.rand(3, 12).bernoulli()
    ours = model.elbo_terms(x.repeat(3000, 1))["reconstruction"].view(3000, 3).mean(0)
    torch.testing.assert_close(ours, reference_reconstruction(model, x, 20000), rtol=0.01, atol=0.1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_kl_terms_of_every_variant_match_torch_distributions(variant):
    model = small_cpvae(**VARIANTS[variant])
    x = torch.rand(5, 12).bernoulli()
    terms = model.elbo_terms(x)
    h, log_pi = model.encode(x)
    expected_kl_c, expected_kl_z = reference_kl_terms(model, h, Categorical(logits=log_pi))
    torch.testing.assert_close(terms["kl_c"], expected_kl_c)
    torch.testing.assert_close(terms["kl_z"], expected_kl_z)


def test_exact_sum_equals_enumeration_with_the_same_noise():
    """With z noise fixed, the exact estimator is literally sum_k pi_k * (-log p(x|z_k, c_k))."""
    model = small_cpvae(category_estimator="exact")
    x = torch.rand(4, 12).bernoulli()
    torch.manual_seed(3)
    ours = model.elbo_terms(x)["reconstruction"]
    torch.manual_seed(3)
    h, log_pi = model.encode(x)
    mean_k, log_var_k = model.posterior(h)
    z = mean_k + torch.exp(0.5 * log_var_k) * torch.randn_like(mean_k)
    enumerated = torch.zeros(4)
    for k in range(4):
        one_hot = F.one_hot(torch.full((4,), k), 4).float()
        logits = model.decoder(torch.cat([z[:, k], one_hot], -1))
        enumerated += log_pi[:, k].exp() * -Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(ours, enumerated)


def test_exact_estimator_has_lower_variance_than_gumbel():
    torch.manual_seed(1)
    gumbel = small_cpvae().eval()
    exact = small_cpvae(category_estimator="exact").eval()
    exact.load_state_dict(gumbel.state_dict())
    x = torch.rand(1, 12).bernoulli()
    draws = lambda m: m.elbo_terms(x.expand(2000, -1))["reconstruction"]
    assert draws(exact).var() < draws(gumbel).var()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_of_every_variant_gets_a_gradient(variant):
    model = small_cpvae(**VARIANTS[variant])
    loss, _ = model.loss(torch.rand(64, 12).bernoulli(), beta=1.0)
    loss.backward()
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert all(name.startswith("category_anchor.") for name in frozen)  # the restart's frozen q_0(c|x) only
    for name, parameter in model.named_parameters():
        if name not in frozen:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert (model.prior.mean.grad.abs().sum(1) > 0).all()
    assert (model.prior.log_std.grad.abs().sum(1) > 0).all()


def test_reference_temperature_schedule_follows_the_per_epoch_recursion():
    model = small_cpvae(temperature_schedule="reference", temperature_start=1.0, temperature_min=0.5)
    tau = 1.0
    for epoch in range(1, 400):
        tau = max(0.5, tau * math.exp(-3e-5 * epoch))
        assert model.start_epoch(epoch)["temperature"] == pytest.approx(tau)
    assert model.start_epoch(0)["temperature"] == 1.0


def test_unknown_variant_names_are_refused():
    for key in ("category_estimator", "temperature_schedule", "prior_init"):
        with pytest.raises(ValueError, match=key):
            small_cpvae(**{key: "nosuch"})


def test_category_balance_penalty_is_trained_but_never_reported_as_elbo():
    model = small_cpvae(category_balance_weight=5.0, category_balance_epochs=2)
    x = torch.rand(32, 12).bernoulli()
    model.start_epoch(0)
    torch.manual_seed(0)
    loss, logged = model.loss(x)
    pi_bar = model.encode(x)[1].exp().mean(0)
    expected_penalty = 5.0 * kl_divergence(Categorical(probs=pi_bar), Categorical(probs=torch.full((4,), 0.25)))
    torch.testing.assert_close(logged["penalty_category_balance"], expected_penalty)
    torch.manual_seed(0)
    terms = model.elbo_terms(x)
    assert float(logged["neg_elbo"]) == pytest.approx(float((terms["reconstruction"] + terms["kl_c"] + terms["kl_z"]).detach().mean()))
    torch.testing.assert_close(loss, logged["neg_elbo"] + expected_penalty)
    model.start_epoch(2)
    assert "penalty_category_balance" not in model.elbo_terms(x)
    assert "penalty_category_balance" not in model.eval().elbo_terms(x)


def separated_clusters(n_per: int = 300, clusters: int = 4, dim: int = 64, flip: float = 0.05, seed: int = 0):
    """Binary data from ``clusters`` random prototypes with ``flip`` of the bits flipped."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(clusters, dim, generator=generator).round()
    labels = torch.arange(clusters).repeat_interleave(n_per)
    noise = torch.rand(len(labels), dim, generator=generator) < flip
    return (prototypes[labels] + noise.float()) % 2, labels


@pytest.mark.parametrize("prior_init", ["kmeans", "umap"])
def test_data_dependent_initialisation_puts_one_category_on_each_cluster(prior_init):
    torch.manual_seed(0)
    x, labels = separated_clusters()
    model = small_cpvae(input_dim=64, latent_dim=8, hidden=32, categories=4, prior_init=prior_init)
    with torch.no_grad():
        h, log_pi = model.encode(x)
        means = (log_pi.exp().unsqueeze(-1) * model.posterior(h)[0]).sum(1)
    report = model.initialise_categories(x)
    assert report["init/head_agreement"] > 0.98
    categories = model.categorize(x)
    accuracy, _ = cluster_accuracy(categories.numpy(), labels.numpy())
    assert accuracy > 0.98  # even an untrained encoder separates prototypes this far apart
    for k in range(4):  # each prior mean is the centroid of the posterior means of its cluster
        torch.testing.assert_close(model.prior.mean[k], means[categories == k].mean(0), atol=0.05, rtol=0)


def parallel_strips(n_per: int = 500, length: float = 10.0, gap: float = 1.0, seed: int = 0):
    """Two long, thin, parallel strips in the plane, ``gap`` apart: k-means' lowest distortion cuts
    both across the middle; their neighbourhood graphs do not touch."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(n_per)
    along = torch.rand(2 * n_per, generator=generator) * length
    across = labels * gap + 0.05 * torch.randn(2 * n_per, generator=generator)
    return torch.stack([along, across], 1).double().numpy(), labels.numpy()


def test_umap_partition_separates_clusters_that_kmeans_cuts_across():
    from cl_replay.models.cpvae import best_kmeans, umap_partition

    points, labels = parallel_strips()
    kmeans_accuracy, _ = cluster_accuracy(best_kmeans(points, 2, 10, 0)[1], labels)
    umap_accuracy, _ = cluster_accuracy(umap_partition(points, 2, seed=0), labels)
    assert kmeans_accuracy < 0.7
    assert umap_accuracy > 0.99


def test_mixture_partition_keeps_the_most_likely_of_its_fits():
    """Two tight blobs side by side and two wide ones far away: the fit from the first k-means
    initialisation merges the tight pair and splits a wide blob; among ten fits the most likely
    one finds the four blobs."""
    from sklearn.mixture import GaussianMixture

    from cl_replay.models.cpvae import mixture_partition

    rng = np.random.default_rng(0)
    centres, scales = np.array([[0.0, 0.0], [1.5, 0.0], [10.0, 0.0], [10.0, 8.0]]), np.array([0.3, 0.3, 2.0, 2.0])
    labels = np.repeat(np.arange(4), 250)
    points = centres[labels] + scales[labels, None] * rng.standard_normal((1000, 2))
    one_fit = GaussianMixture(4, covariance_type="full", random_state=0).fit(points)
    ten_fits = GaussianMixture(4, covariance_type="full", n_init=10, random_state=0).fit(points)
    assert cluster_accuracy(one_fit.predict(points), labels)[0] < 0.7
    assert ten_fits.score(points) > one_fit.score(points)
    assert cluster_accuracy(mixture_partition(points, 4, seed=0, restarts=1), labels)[0] < 0.7
    assert cluster_accuracy(mixture_partition(points, 4, seed=0, restarts=10), labels)[0] > 0.95


def test_initialisation_from_a_given_partition():
    """With ``labels`` the restart uses that partition instead of k-means: category k's prior mean is
    the mean posterior mean of its group and q(c|x) is fitted to the partition (here a relabelling
    of the true clusters, so k-means could not produce the same category indices by chance)."""
    torch.manual_seed(0)
    x, labels = separated_clusters()
    partition = (labels + 1) % 4
    model = small_cpvae(input_dim=64, latent_dim=8, hidden=32, categories=4)
    with torch.no_grad():
        h, log_pi = model.encode(x)
        means = (log_pi.exp().unsqueeze(-1) * model.posterior(h)[0]).sum(1)
    report = model.initialise_categories(x, labels=partition)
    assert report["init/head_agreement"] > 0.98
    assert float((model.categorize(x) == partition).float().mean()) > 0.98
    for k in range(4):
        torch.testing.assert_close(model.prior.mean[k], means[partition == k].mean(0))


def test_category_anchor_holds_the_restart_partition_in_its_epochs_only():
    """The anchor is the encoder and head frozen right after the restart; from the restart to the
    end of epoch ``category_anchor_until`` the loss adds
    w * CE(q(c|x), argmax q_0(c|x)) (checked with torch.distributions), never part of neg_elbo."""
    torch.manual_seed(0)
    x, _ = separated_clusters(n_per=50, dim=12)
    model = small_cpvae(prior_init="kmeans", prior_init_epoch=2, category_anchor_weight=3.0, category_anchor_until=4)
    assert not any(p.requires_grad for p in model.category_anchor.parameters())
    model.start_epoch(1)
    assert "penalty_category_anchor" not in model.elbo_terms(x)  # before the restart
    model.start_epoch(3)
    assert "penalty_category_anchor" not in model.elbo_terms(x)  # in its epochs, but no restart has set it
    model.end_epoch(2, lambda: x)
    with torch.no_grad():
        anchor_labels = model.categorize(x)  # the restart's q(c|x), which the anchor froze
        torch.testing.assert_close(model.category_anchor(x).argmax(-1), anchor_labels)
    with torch.no_grad():  # the model moves on; the anchor does not
        model.category_logits.weight.add_(torch.randn_like(model.category_logits.weight))
    for epoch in (2, 3):  # 0-based: the two epochs after the restart at the end of epoch 2 (1-based)
        model.start_epoch(epoch)
        loss, logged = model.loss(x)
        expected = -3.0 * Categorical(logits=model.encode(x)[1]).log_prob(anchor_labels).mean()
        torch.testing.assert_close(logged["penalty_category_anchor"], expected)
        torch.testing.assert_close(loss, logged["neg_elbo"] + expected)
    model.start_epoch(4)
    assert "penalty_category_anchor" not in model.elbo_terms(x)
    model.start_epoch(3)
    assert "penalty_category_anchor" not in model.eval().elbo_terms(x)
    restored = small_cpvae(prior_init="kmeans", prior_init_epoch=2, category_anchor_weight=3.0, category_anchor_until=4)
    restored.load_state_dict(model.state_dict())  # a resumed run keeps its anchor
    torch.testing.assert_close(restored.category_anchor(x), model.category_anchor(x))


def test_kmeans_initialisation_runs_once_at_its_epoch():
    model = small_cpvae(prior_init="kmeans", prior_init_epoch=2)
    x, _ = separated_clusters(n_per=50, dim=12)
    before = model.prior.mean.detach().clone()
    assert model.end_epoch(1, lambda: x) == {}
    torch.testing.assert_close(model.prior.mean, before)
    assert "init/head_agreement" in model.end_epoch(2, lambda: x)
    assert not torch.allclose(model.prior.mean, before)
    assert model.end_epoch(3, lambda: x) == {}


@torch.no_grad()
def test_evaluation_of_a_shared_posterior_variant_is_a_bound():
    from cl_replay.evaluation import log_likelihood

    model = small_cpvae(**VARIANTS["exact_shared_posterior"]).eval()
    x = torch.rand(100, 12).bernoulli()
    assert float(-log_likelihood(model, x, num_samples=400).mean()) <= elbo_terms(model, x)["neg_elbo"]


def test_default_recipe_finds_the_modes_of_a_synthetic_mixture(tmp_path):
    """The default CP-VAE recipe (``ModelConfig`` defaults: Gumbel-softmax, UMAP restart of the
    categories after ``prior_init_epoch`` epochs, held by the anchor) trained by the real trainer puts each of six
    well-separated clusters into its own category."""
    from cl_replay.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    x, labels = separated_clusters(n_per=400, clusters=6, dim=64, flip=0.1, seed=1)
    permutation = torch.randperm(len(labels))
    x, labels = x[permutation], labels[permutation]
    defaults = ModelConfig()
    assert (defaults.category_estimator, defaults.prior_init, defaults.category_anchor_weight) == ("gumbel", "umap", 1.0)
    config = ModelConfig(input_dim=64, latent_dim=8, hidden=64, categories=6)
    model = CPVAE(config)
    trainer = Trainer(model, TrainConfig(epochs=config.prior_init_epoch + 3, warmup=5, batch_size=100, is_samples=0),
                      tmp_path, x[:2000], x[2000:], binarize_batches=False, image_shape=None, val_y=labels[2000:])
    trainer.fit()
    accuracy, _ = cluster_accuracy(model.categorize(x[2000:]).numpy(), labels[2000:].numpy())
    assert accuracy >= 0.95
