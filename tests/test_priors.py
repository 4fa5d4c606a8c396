"""Tests for cl_replay.priors: densities against torch.distributions, sampling, flows, KL terms."""
from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D
from torch import nn

from cl_replay.models.vae import GaussianEncoder
from cl_replay.priors import (
    AffineCoupling,
    FlowPrior,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
    VampPrior,
    uniform_mixture_log_prob,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def mixture(means: torch.Tensor, log_vars: torch.Tensor) -> D.MixtureSameFamily:
    """The equally weighted mixture of diagonal Gaussians, built by torch.distributions."""
    weights = D.Categorical(logits=torch.zeros(means.shape[0], dtype=means.dtype))
    return D.MixtureSameFamily(weights, D.Independent(D.Normal(means, torch.exp(0.5 * log_vars)), 1))


class LinearEncoder(nn.Module):
    """A deterministic stand-in encoder: mean = scale * u[:, :latent], fixed log-variance."""

    def __init__(self, latent: int, scale: float, log_var: float) -> None:
        super().__init__()
        self.latent, self.scale, self.log_var = latent, scale, log_var

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.scale * u[..., : self.latent]
        return mean, torch.full_like(mean, self.log_var)


def separated_prior(kind: str, k: int = 4, latent: int = 3) -> MixtureOfGaussiansPrior | VampPrior:
    """A MoG or VampPrior with K well-separated components: means 10 e_k, standard deviations 0.5."""
    if kind == "mog":
        prior = MixtureOfGaussiansPrior(k, latent + 1)
        with torch.no_grad():
            prior.mean.copy_(10.0 * torch.eye(k, latent + 1))
            prior.log_std.fill_(math.log(0.5))
        return prior
    prior = VampPrior(k, 6, LinearEncoder(latent + 1, 10.0, 2 * math.log(0.5)), latent + 1)
    with torch.no_grad():
        prior.raw_pseudo_inputs.copy_(torch.eye(k, 6))
    return prior


# --------------------------------------------------------------------------- densities


def test_standard_normal_log_prob_and_kl() -> None:
    prior = StandardNormalPrior(5)
    z, mean, log_var = torch.randn(3, 7, 5), torch.randn(7, 5), torch.randn(7, 5)
    torch.testing.assert_close(prior.log_prob(z), D.Normal(0.0, 1.0).log_prob(z).sum(-1))
    q, p = D.Normal(mean, torch.exp(0.5 * log_var)), D.Normal(torch.zeros(5), torch.ones(5))
    torch.testing.assert_close(prior.kl(mean, log_var, z[0]), D.kl_divergence(q, p).sum(-1))


def test_mixture_log_prob_is_log_of_mixture_density() -> None:
    means, log_vars = torch.randn(6, 4), torch.randn(6, 4)
    z = 2.0 * torch.randn(5, 9, 4)
    expected = mixture(means, log_vars).log_prob(z)
    torch.testing.assert_close(uniform_mixture_log_prob(z, means, log_vars), expected)
    mean_of_logs = D.Independent(D.Normal(means, torch.exp(0.5 * log_vars)), 1).log_prob(z.unsqueeze(-2)).mean(-1)
    assert (expected > mean_of_logs + 1e-3).all()  # Jensen: the mean of component logs is too low


def test_mog_log_prob_matches_torch_distributions() -> None:
    prior = MixtureOfGaussiansPrior(5, 3)
    with torch.no_grad():
        prior.log_std.normal_(0.0, 0.5)
    z = 2.0 * torch.randn(11, 3)
    expected = mixture(prior.mean.detach(), 2.0 * prior.log_std.detach()).log_prob(z)
    torch.testing.assert_close(prior.log_prob(z), expected)
    assert prior.log_prob(torch.randn(4, 2, 3)).shape == (4, 2)


def test_mog_initialisation() -> None:
    prior = MixtureOfGaussiansPrior(200, 40)
    assert torch.all(prior.log_std == 0)
    assert abs(prior.mean.mean().item()) < 0.05 and abs(prior.mean.std().item() - 1.0) < 0.05


def test_vampprior_log_prob_matches_mixture_of_encoder_outputs() -> None:
    encoder = GaussianEncoder(12, 16, 3)
    prior = VampPrior(7, 12, encoder, 3)
    with torch.no_grad():
        prior.raw_pseudo_inputs.uniform_(-0.5, 1.5)  # hardtanh must clip these into [0, 1]
    u = prior.pseudo_inputs
    assert u.min() >= 0 and u.max() <= 1 and (u == 0).any() and (u == 1).any()
    means, log_vars = encoder(u.clamp(0, 1))
    z = torch.randn(10, 3)
    torch.testing.assert_close(prior.log_prob(z), mixture(means.detach(), log_vars.detach()).log_prob(z))


def test_vampprior_pseudo_input_initialisation_and_gradients() -> None:
    encoder = GaussianEncoder(784, 16, 3)
    prior = VampPrior(50, 784, encoder, 3)
    raw = prior.raw_pseudo_inputs.detach()
    assert abs(raw.mean().item() - 0.05) < 1e-3 and abs(raw.std().item() - 0.01) < 1e-3
    prior.log_prob(torch.randn(4, 3)).sum().backward()
    assert prior.raw_pseudo_inputs.grad.abs().sum() > 0
    assert all(p.grad is not None for p in encoder.parameters())


def test_vampprior_does_not_register_the_encoder() -> None:
    encoder = GaussianEncoder(12, 16, 3)
    prior = VampPrior(7, 12, encoder, 3)
    assert [name for name, _ in prior.named_parameters()] == ["raw_pseudo_inputs"]
    assert list(prior.state_dict()) == ["raw_pseudo_inputs"]


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("kind", ["mog", "vampprior"])
def test_mixture_sampling_follows_the_mixture(kind: str) -> None:
    prior = separated_prior(kind)
    means, log_vars = (t.detach() for t in prior.components())
    n = 8000
    z = prior.sample(n)
    assert z.shape == (n, prior.latent_dim)
    nearest = torch.cdist(z, means).argmin(-1)
    fractions = torch.bincount(nearest, minlength=means.shape[0]).float() / n
    torch.testing.assert_close(fractions, torch.full_like(fractions, 0.25), atol=0.025, rtol=0)
    # Within each component: its mean and variance.
    for k in range(means.shape[0]):
        members = z[nearest == k]
        torch.testing.assert_close(members.mean(0), means[k], atol=0.06, rtol=0)
        torch.testing.assert_close(members.var(0), log_vars[k].exp(), atol=0.04, rtol=0)
    reference = mixture(means, log_vars)
    torch.testing.assert_close(z.mean(0), reference.mean, atol=0.3, rtol=0)
    torch.testing.assert_close(z.var(0), reference.variance, rtol=0.08, atol=0.1)


# --------------------------------------------------------------------------- flows


def jacobian_log_det(function, z: torch.Tensor) -> torch.Tensor:
    """log|det J| of ``function`` at the single vector z, from autograd's Jacobian."""
    return torch.linalg.slogdet(torch.autograd.functional.jacobian(function, z))[1]


@pytest.fixture
def coupling() -> AffineCoupling:
    layer = AffineCoupling(torch.tensor([1, 0, 1, 0, 0]), hidden=16).double()
    with torch.no_grad():
        layer.scale.uniform_(0.5, 2.0)
    return layer


def test_coupling_inverts_exactly(coupling: AffineCoupling) -> None:
    z = 2.0 * torch.randn(9, 5, dtype=torch.float64)
    y, log_det = coupling(z)
    z_back, inverse_log_det = coupling.inverse(y)
    torch.testing.assert_close(z_back, z)
    torch.testing.assert_close(inverse_log_det, -log_det)
    assert not torch.allclose(y, z)
    torch.testing.assert_close(y[:, [0, 2]], z[:, [0, 2]])  # the masked-in half passes unchanged


def test_coupling_log_det_matches_autograd_jacobian(coupling: AffineCoupling) -> None:
    for z in 2.0 * torch.randn(3, 5, dtype=torch.float64):
        log_det = coupling(z.unsqueeze(0))[1][0]
        torch.testing.assert_close(log_det, jacobian_log_det(lambda v: coupling(v)[0], z))
        y = coupling(z.unsqueeze(0))[0][0]
        torch.testing.assert_close(coupling.inverse(y.unsqueeze(0))[1][0], jacobian_log_det(lambda v: coupling.inverse(v)[0], y))
    assert abs(log_det.item()) > 1e-3  # a non-trivial scaling


@pytest.fixture
def flow() -> FlowPrior:
    return FlowPrior(4, layers=4, hidden=16).double()


def test_flow_prior_inverts_and_alternates_masks(flow: FlowPrior) -> None:
    z = torch.randn(8, 4, dtype=torch.float64)
    z0, log_det = flow(z)
    z_back, inverse_log_det = flow.inverse(z0)
    torch.testing.assert_close(z_back, z)
    torch.testing.assert_close(inverse_log_det, -log_det)
    masks = [c.mask for c in flow.couplings]
    assert all(torch.equal(a, 1 - b) for a, b in zip(masks[:-1], masks[1:]))


def test_flow_prior_log_prob_is_change_of_variables(flow: FlowPrior) -> None:
    base = D.Independent(D.Normal(torch.zeros(4, dtype=torch.float64), 1.0), 1)
    for z in torch.randn(3, 4, dtype=torch.float64):
        expected = base.log_prob(flow(z.unsqueeze(0))[0][0]) + jacobian_log_det(lambda v: flow(v)[0], z)
        torch.testing.assert_close(flow.log_prob(z.unsqueeze(0))[0], expected)


def density_on_grid(flow: FlowPrior) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid points covering [-12, 12]^2 and the probability mass p(z) dz of each grid cell."""
    grid = torch.linspace(-12, 12, 481, dtype=torch.float64)
    points = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        return points, flow.log_prob(points).exp() * (grid[1] - grid[0]) ** 2


def test_flow_prior_density_integrates_to_one() -> None:
    _, mass = density_on_grid(FlowPrior(2, layers=6, hidden=16).double())
    assert abs(mass.sum().item() - 1.0) < 0.01


def test_flow_prior_samples_follow_its_density() -> None:
    """Sample moments equal the moments of exp(log_prob) integrated on a grid."""
    flow = FlowPrior(2, layers=6, hidden=16).double()
    points, mass = density_on_grid(flow)
    mean = mass @ points
    covariance = (points - mean).t() @ ((points - mean) * mass.unsqueeze(-1))
    with torch.no_grad():
        z = flow.sample(20000)
    torch.testing.assert_close(z.mean(0), mean, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(z.t()), covariance, atol=0.06, rtol=0)
    assert not torch.allclose(covariance, torch.eye(2, dtype=torch.float64), atol=0.1)  # the flow is not N(0, I)


# --------------------------------------------------------------------------- KL terms


@pytest.mark.parametrize("kind", ["mog", "vampprior", "flow"])
def test_kl_is_unbiased(kind: str) -> None:
    """Averaged over posterior draws, ``kl`` equals the Monte Carlo KL(q || p) from torch.distributions."""
    latent = 4
    if kind == "flow":
        prior = FlowPrior(latent, layers=4, hidden=16)
    elif kind == "mog":
        prior = MixtureOfGaussiansPrior(5, latent)
    else:
        prior = VampPrior(5, 12, GaussianEncoder(12, 16, latent), latent)
    mean, log_var = torch.randn(latent), torch.randn(latent) - 1.0
    q = D.Independent(D.Normal(mean, torch.exp(0.5 * log_var)), 1)
    z = q.sample((40000,))
    with torch.no_grad():
        ours = prior.kl(mean, log_var, z)
        reference = q.log_prob(z) - prior.log_prob(z)
    error = 4 * (ours.std() + reference.std()) / math.sqrt(z.shape[0])
    assert abs(ours.mean() - reference.mean()) < error
    assert reference.mean() > 0
