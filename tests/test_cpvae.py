"""CP-VAE: every ELBO term against an independent computation, gradients, sampling, IS likelihood."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, MultivariateNormal, Normal, kl_divergence

from cl_replay.evaluation import elbo_terms, log_likelihood
from cl_replay.models import CPVAE, ModelConfig


def small_cpvae(**overrides) -> CPVAE:
    options = dict(input_dim=12, latent_dim=3, hidden=16, categories=4) | overrides
    return CPVAE(ModelConfig(**options))


def diag_normal(mean, log_var):
    return Independent(Normal(mean, torch.exp(0.5 * log_var)), 1)


def reference_kl_terms(model: CPVAE, h: torch.Tensor, q_c: Categorical) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(q(c|x) || Uniform(K)) and sum_k q(c_k|x) KL(q(z|x,c_k) || p(z|c_k)), by torch.distributions
    on the explicit per-category posteriors."""
    categories = model.categories
    kl_c = kl_divergence(q_c, Categorical(probs=torch.full((categories,), 1.0 / categories)))
    kl_z = torch.zeros(h.shape[0])
    for k in range(categories):
        mean, log_var = model.posterior(h, F.one_hot(torch.full((h.shape[0],), k), categories).float())
        prior = diag_normal(model.prior.mean[k], 2 * model.prior.log_std[k])
        kl_z += q_c.probs[:, k] * kl_divergence(diag_normal(mean, log_var), prior)
    return kl_c, kl_z


def test_with_labels_the_terms_are_those_of_log_p_x_y_under_the_restricted_posterior():
    """With a category mask, q(c|x,y) = q(c|x) restricted to the label's categories: KL terms of that
    posterior (torch.distributions), and category_label_nll = -log sum_{c of y} q(c|x)."""
    model = small_cpvae()
    x = torch.rand(6, 12).bernoulli()
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]] * 3, dtype=torch.bool)
    terms = model.elbo_terms(x, category_mask=mask)
    h, log_pi = model.encode(x)
    mass = (log_pi.exp() * mask).sum(-1)
    torch.testing.assert_close(terms["category_label_nll"], -mass.log())
    expected_kl_c, expected_kl_z = reference_kl_terms(model, h, Categorical(probs=log_pi.exp() * mask / mass.unsqueeze(-1)))
    torch.testing.assert_close(terms["kl_c"], expected_kl_c)
    torch.testing.assert_close(terms["kl_z"], expected_kl_z)
    terms["category_label_nll"].sum().backward()
    assert model.category_logits.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_aggregated_posterior_with_labels_holds_only_the_labels_categories():
    model = small_cpvae()
    x = torch.rand(40, 12).bernoulli()
    mask = torch.zeros(40, 4, dtype=torch.bool)
    mask[:, 1] = mask[:, 3] = True
    model.fit_generation(x, batch_size=16, category_mask=mask)
    q = model.aggregated_posterior
    assert q[0] == 0 and q[2] == 0 and abs(float(q.sum()) - 1) < 1e-6
    log_pi = model.encode(x)[1]
    expected = (log_pi.exp()[:, [1, 3]] / log_pi.exp()[:, [1, 3]].sum(-1, keepdim=True)).mean(0)
    torch.testing.assert_close(q[[1, 3]], expected)


def test_evaluation_reconstruction_is_unbiased_monte_carlo():
    """In evaluation mode c is an exact draw of q(c|x): the mean of many single-sample terms equals an
    independent Monte Carlo estimate of E_q(z,c|x)[-log p(x|z,c)] built from torch.distributions."""
    model = small_cpvae().eval()
    x = torch.rand(3, 12).bernoulli()
    n = 20000
    ours = torch.stack([model.elbo_terms(x)["reconstruction"] for _ in range(400)]).mean(0)
    with torch.no_grad():
        h, log_pi = model.encode(x)
        c = Categorical(logits=log_pi).sample((n,))  # (n, 3)
        one_hot = F.one_hot(c, 4).float()
        mean, log_var = model.posterior(h.expand(n, 3, -1), one_hot)
        z = diag_normal(mean, log_var).sample()
        logits = model.decoder(torch.cat([z, one_hot], -1))
        reference = -Bernoulli(logits=logits).log_prob(x).sum(-1).mean(0)
    torch.testing.assert_close(ours, reference, rtol=0.02, atol=0.2)


def test_every_parameter_gets_a_gradient_including_each_prior_component():
    model = small_cpvae()
    x = torch.rand(64, 12).bernoulli()
    loss, _ = model.loss(x, beta=1.0)
    loss.backward()
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert all(name.startswith("category_anchor.") for name in frozen)  # the restart's frozen q_0(c|x) only
    for name, parameter in model.named_parameters():
        if name not in frozen:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # every row (category) of the conditional prior is trained, not just the popular ones
    assert (model.prior.mean.grad.abs().sum(1) > 0).all()
    assert (model.prior.log_std.grad.abs().sum(1) > 0).all()
    assert {"prior.mean", "prior.log_std"} <= {name for name, _ in model.named_parameters()}


def test_prior_is_learned_by_the_optimizer():
    model = small_cpvae()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = model.prior.mean.detach().clone(), model.prior.log_std.detach().clone()
    x = torch.rand(32, 12).bernoulli()
    for _ in range(5):
        loss, _ = model.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.allclose(before[0], model.prior.mean)
    assert not torch.allclose(before[1], model.prior.log_std)


def test_gumbel_softmax_samples_are_relaxed_one_hots_following_q_c():
    model = small_cpvae()
    model.start_epoch(0)
    x = torch.rand(1, 12).bernoulli().expand(20000, 12)
    _, log_pi = model.encode(x)
    c = F.gumbel_softmax(log_pi, tau=model.temperature)
    assert (c >= 0).all() and torch.allclose(c.sum(-1), torch.ones(20000))
    frequencies = torch.bincount(c.argmax(-1), minlength=4).float() / 20000
    torch.testing.assert_close(frequencies, log_pi[0].exp(), atol=0.015, rtol=0)
    cold = F.gumbel_softmax(log_pi, tau=0.1)
    assert cold.max(-1).values.mean() > c.max(-1).values.mean()


def test_temperature_schedule():
    model = small_cpvae(temperature_start=1.0, temperature_min=0.5, temperature_epochs=100)
    values = [model.start_epoch(e)["temperature"] for e in (0, 50, 100, 500)]
    assert values[0] == pytest.approx(1.0)
    assert values[1] == pytest.approx(2 ** -0.5)
    assert values[2] == pytest.approx(0.5) and values[3] == pytest.approx(0.5)


def test_aggregated_posterior_and_category_counts():
    model = small_cpvae()
    x = torch.rand(50, 12).bernoulli()
    model.fit_generation(x, batch_size=7)
    torch.testing.assert_close(model.aggregated_posterior, model.encode(x)[1].exp().mean(0))
    assert model.aggregated_posterior.sum().item() == pytest.approx(1.0)
    q = torch.tensor([0.5, 0.3, 0.2, 0.0])
    assert model.category_counts(10, q).tolist() == [5, 3, 2, 0]
    assert model.category_counts(7, q).tolist() == [4, 2, 1, 0]  # 3.5, 2.1, 1.4: the largest remainder wins
    model.aggregated_posterior.copy_(q)
    samples, categories = model.sample_with_categories(0, counts=model.category_counts(10))
    assert samples.shape == (10, 12) and categories.tolist() == [0] * 5 + [1] * 3 + [2] * 2
    _, drawn = model.sample_with_categories(20000)
    torch.testing.assert_close(torch.bincount(drawn, minlength=4).float() / 20000, q, atol=0.015, rtol=0)


def test_sampling_from_one_category_uses_its_conditional_prior():
    model = small_cpvae()
    with torch.no_grad():
        model.prior.mean[2] = torch.tensor([5.0, -5.0, 5.0])
        model.prior.log_std[2] = math.log(0.1)
    z = model.prior.sample(torch.full((5000,), 2))
    torch.testing.assert_close(z.mean(0), torch.tensor([5.0, -5.0, 5.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(z.std(0), torch.full((3,), 0.1), atol=0.005, rtol=0)
    assert model.sample(6, category=2).shape == (6, 12)


def linear_gaussian_cpvae() -> CPVAE:
    """A CP-VAE whose decoder is linear and whose likelihood is Gaussian: log p(x) is exact."""
    config = ModelConfig(input_dim=3, latent_dim=2, hidden=8, categories=3, likelihood="gaussian")
    model = CPVAE(config, decoder=nn.Linear(2 + 3, 3))
    with torch.no_grad():
        model.likelihood.log_std.fill_(math.log(0.7))
        model.prior.log_std.uniform_(-0.5, 0.3)
    return model.eval()


def exact_log_px(model: CPVAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log 1/K sum_k N(x | A mu_k + B e_k + b, A S_k A^T + s^2 I)."""
    weight, bias = model.decoder.weight, model.decoder.bias
    a, b = weight[:, :2], weight[:, 2:]
    components = []
    for k in range(3):
        mean = a @ model.prior.mean[k] + b[:, k] + bias
        covariance = a @ torch.diag(torch.exp(2 * model.prior.log_std[k])) @ a.T + torch.eye(3) * 0.49
        components.append(MultivariateNormal(mean, covariance).log_prob(x))
    return torch.logsumexp(torch.stack(components), 0) - math.log(3)


@torch.no_grad()
def test_importance_sampled_log_likelihood_is_exact_on_a_linear_gaussian_model():
    model = linear_gaussian_cpvae()
    x = torch.randn(6, 3)
    estimate = log_likelihood(model, x, num_samples=300000, batch_size=6, samples_per_call=30000)
    torch.testing.assert_close(estimate, exact_log_px(model, x), atol=0.03, rtol=0)


@torch.no_grad()
def test_importance_sampled_log_likelihood_bounds_the_elbo():
    model = small_cpvae().eval()
    x = torch.rand(200, 12).bernoulli()
    neg_elbo = elbo_terms(model, x)["neg_elbo"]
    nll = float(-log_likelihood(model, x, num_samples=200).mean())
    assert nll <= neg_elbo
    # with a single sample per category, the bound is already no worse than the ELBO (Jensen)
    assert float(-log_likelihood(model, x, num_samples=4).mean()) <= neg_elbo + 0.5


def test_cp1_is_a_single_learned_gaussian_prior():
    model = small_cpvae(categories=1)
    x = torch.rand(16, 12).bernoulli()
    terms = model.elbo_terms(x)
    assert torch.all(terms["kl_c"] == 0)
    loss, _ = model.loss(x)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("posterior_sees_category", [True, False])
def test_kl_per_category_and_its_gradients_match_torch_distributions_where_log_variances_clip(posterior_sees_category):
    """The expanded KL(q(z|x,c_k) || p(z|c_k)) of every category, against torch.distributions on the
    explicit per-category posteriors, with spread-out prior means and log-variances pushed past
    both ends of the clip [-6, 2]; values and the gradients of every input and parameter."""
    torch.manual_seed(0)
    model = small_cpvae(posterior_sees_category=posterior_sees_category)
    with torch.no_grad():
        model.posterior.linear.weight.mul_(8.0)
        model.prior.mean.normal_(0.0, 3.0)
        model.prior.log_std.uniform_(-2.0, 1.0)
    h = torch.randn(6, 16, requires_grad=True)
    base = model.posterior.base(h)
    _, log_var = model.posterior.from_base(base)
    assert (log_var == -6.0).any() and (log_var == 2.0).any()
    ours = model.posterior.kl_per_category(base, model.prior)
    mean_k, log_var_k = model.posterior.from_base(base)
    prior = diag_normal(model.prior.mean, 2 * model.prior.log_std)
    expected = kl_divergence(diag_normal(mean_k.expand(-1, 4, -1), log_var_k.expand(-1, 4, -1)), prior)
    torch.testing.assert_close(ours, expected)
    weights = torch.rand(6, 4)
    inputs = [h, model.prior.mean, model.prior.log_std, model.posterior.linear.weight, model.posterior.linear.bias]
    for ours_grad, expected_grad in zip(torch.autograd.grad((weights * ours).sum(), inputs, retain_graph=True),
                                        torch.autograd.grad((weights * expected).sum(), inputs)):
        torch.testing.assert_close(ours_grad, expected_grad, rtol=1e-4, atol=1e-4)
