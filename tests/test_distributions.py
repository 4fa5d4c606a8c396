"""The closed-form densities and KLs against torch.distributions."""
import math

import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal, RelaxedOneHotCategorical, kl_divergence

from cl_replay.distributions import (
    bernoulli_log_prob,
    categorical_kl_uniform,
    gaussian_kl,
    gaussian_log_prob,
    gumbel_softmax_sample,
    standard_normal_kl,
)


def diag_normal(mean, log_var):
    return Independent(Normal(mean, torch.exp(0.5 * log_var)), 1)


def test_gaussian_log_prob_matches_torch():
    mean, log_var, z = torch.randn(7, 5), torch.randn(7, 5), torch.randn(7, 5)
    torch.testing.assert_close(gaussian_log_prob(z, mean, log_var), diag_normal(mean, log_var).log_prob(z))


def test_gaussian_kl_matches_torch_with_broadcasting():
    mean_q, log_var_q = torch.randn(6, 1, 4), torch.randn(6, 1, 4)
    mean_p, log_var_p = torch.randn(3, 4), torch.randn(3, 4)
    expected = kl_divergence(diag_normal(mean_q, log_var_q), diag_normal(mean_p, log_var_p))
    torch.testing.assert_close(gaussian_kl(mean_q, log_var_q, mean_p, log_var_p), expected)
    assert expected.shape == (6, 3)


def test_standard_normal_kl_matches_torch():
    mean, log_var = torch.randn(9, 3), torch.randn(9, 3)
    expected = kl_divergence(diag_normal(mean, log_var), diag_normal(torch.zeros(3), torch.zeros(3)))
    torch.testing.assert_close(standard_normal_kl(mean, log_var), expected)


def test_categorical_kl_to_uniform_is_log_k_minus_entropy():
    logits = torch.randn(8, 5)
    log_probs = torch.log_softmax(logits, -1)
    expected = kl_divergence(Categorical(logits=logits), Categorical(probs=torch.full((5,), 0.2)))
    torch.testing.assert_close(categorical_kl_uniform(log_probs), expected)
    torch.testing.assert_close(categorical_kl_uniform(log_probs), math.log(5) - Categorical(logits=logits).entropy())


def test_bernoulli_log_prob_matches_torch():
    logits, x = torch.randn(4, 10), torch.randint(0, 2, (4, 10)).float()
    torch.testing.assert_close(bernoulli_log_prob(x, logits), Bernoulli(logits=logits).log_prob(x).sum(-1))


def test_gumbel_softmax_sample_has_the_relaxed_categorical_distribution():
    torch.manual_seed(0)
    logits, temperature, n = torch.tensor([1.0, 0.0, -1.5]), 0.7, 40000
    ours = gumbel_softmax_sample(logits.expand(n, -1), temperature)
    reference = RelaxedOneHotCategorical(torch.tensor(temperature), logits=logits).sample((n,))
    torch.testing.assert_close(ours.sum(-1), torch.ones(n))
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    for k in range(3):  # the marginal of every coordinate, quantile by quantile
        torch.testing.assert_close(ours[:, k].quantile(quantiles), reference[:, k].quantile(quantiles), atol=0.015, rtol=0)


def test_hard_gumbel_softmax_sample_is_an_exact_categorical_draw():
    torch.manual_seed(0)
    logits, n = torch.tensor([1.0, 0.0, -1.5]), 40000
    draws = gumbel_softmax_sample(logits.expand(n, -1), 0.5, hard=True)
    assert set(draws.unique().tolist()) == {0.0, 1.0} and torch.equal(draws.sum(-1), torch.ones(n))
    torch.testing.assert_close(draws.mean(0), logits.softmax(-1), atol=0.01, rtol=0)  # 4 standard errors


def test_gumbel_softmax_gradient_does_not_depend_on_the_thread_count():
    """A generator may change its number of threads while it trains (``strategies.worker``)."""
    logits, weights = torch.randn(256, 20, requires_grad=True), torch.randn(256, 20)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            logits.grad = None
            (gumbel_softmax_sample(logits, 0.5) * weights).sum().backward()
            grads.append(logits.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1])
