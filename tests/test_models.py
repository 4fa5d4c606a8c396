"""Tests for the model registry: training, gradients, HVAE KL terms, importance weights, configs,
and the comparison of pre-training runs."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torchvision.utils
import yaml
from torch import distributions as D

from cl_replay.compare import PAPER_TABLE1, compare_pretrain_runs
from cl_replay.config import build_configs, read_yaml
from cl_replay.models import MODELS, HVAE, ModelConfig, build_model
from cl_replay.priors import VampPrior

SMALL = dict(hidden=32, latent_dim=4, input_dim=20, categories=3)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
TRAIN_KEYS = {"lr", "batch_size", "warmup", "patience", "epochs", "dataset", "is_samples", "seed"}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def small_model(name: str, **overrides) -> torch.nn.Module:
    return build_model(ModelConfig(model=name, **{**SMALL, **overrides}))


def tiny_binary_data(n: int = 64, dim: int = 20) -> torch.Tensor:
    """Noisy copies of three binary prototypes (5% of the bits flipped)."""
    generator = torch.Generator().manual_seed(1)
    prototypes = torch.rand(3, dim, generator=generator).round()
    x = prototypes[torch.arange(n) % 3]
    flips = torch.rand(n, dim, generator=generator) < 0.05
    return torch.where(flips, 1 - x, x)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("hidden_layer", ["gated", "relu"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_decreases_the_loss(name: str, hidden_layer: str) -> None:
    model, x = small_model(name, hidden_layer=hidden_layer), tiny_binary_data()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss, logged = model.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert set(logged) >= {"reconstruction", "neg_elbo"} and any(k.startswith("kl") for k in logged)


@pytest.mark.parametrize("hidden_layer", ["gated", "relu"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_gets_a_gradient(name: str, hidden_layer: str) -> None:
    model = small_model(name, hidden_layer=hidden_layer)
    model.loss(tiny_binary_data())[0].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sample_and_reconstruct_shapes(name: str) -> None:
    model, x = small_model(name), tiny_binary_data(6)
    samples, reconstructions = model.sample(5), model.reconstruct(x)
    assert samples.shape == (5, 20) and reconstructions.shape == (6, 20)
    assert samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"cpvae", "cp1"}))
def test_sampling_is_ancestral_from_the_prior(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paper section 5: z (z2 for the hierarchical models) from the model's own prior, then down."""
    model, z = small_model(name), 3.0 * torch.randn(7, 4)
    calls = []
    monkeypatch.setattr(model.prior, "sample", lambda n: calls.append(n) or z)
    torch.manual_seed(5)
    samples = model.sample(7)
    assert calls == [7]
    with torch.no_grad():
        if isinstance(model, HVAE):
            torch.manual_seed(5)
            mean1, log_var1 = model.conditional_prior_z1(z)
            z1 = mean1 + torch.exp(0.5 * log_var1) * torch.randn(mean1.shape)
            expected = torch.sigmoid(model.decoder(torch.cat([z1, z], dim=-1)))
        else:
            expected = torch.sigmoid(model.decoder(z))
    torch.testing.assert_close(samples, expected)


@pytest.mark.parametrize("name", ["vampprior", "hvp"])
def test_vampprior_models_hold_encoder_parameters_once(name: str) -> None:
    model = small_model(name)
    assert isinstance(model.prior, VampPrior)
    keys = list(model.state_dict())
    assert len(keys) == len(set(keys)) and not any("_encoder" in key for key in keys)
    parameters = list(model.parameters())
    assert len({id(p) for p in parameters}) == len(parameters)
    # The prior's mixture components are the model's own encoder at the pseudo-inputs.
    encoder = model.encoder if name == "vampprior" else model.encoder_z2
    torch.testing.assert_close(model.prior.components()[0], encoder(model.prior.pseudo_inputs)[0])
    reloaded = small_model(name)
    reloaded.load_state_dict(model.state_dict())
    torch.testing.assert_close(reloaded.prior.components()[0], model.prior.components()[0])


# --------------------------------------------------------------------------- HVAE terms


def hvae_reference_kls(model: HVAE, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo KL terms of one example x with torch.distributions: (kl_z2 draws, kl_z1 draws)."""
    mean2, log_var2 = model.encoder_z2(x)
    q2 = D.Independent(D.Normal(mean2, torch.exp(0.5 * log_var2)), 1)
    z2 = q2.sample((n,)).squeeze(1)
    if isinstance(model.prior, VampPrior):
        means, log_vars = model.prior.components()
        weights = D.Categorical(logits=torch.zeros(means.shape[0]))
        p2 = D.MixtureSameFamily(weights, D.Independent(D.Normal(means, torch.exp(0.5 * log_vars)), 1))
    else:
        p2 = D.Independent(D.Normal(torch.zeros_like(mean2[0]), 1.0), 1)
    mean1, log_var1 = model.encoder_z1(torch.cat([x.expand(n, -1), z2], dim=-1))
    q1 = D.Independent(D.Normal(mean1, torch.exp(0.5 * log_var1)), 1)
    z1 = q1.sample()
    prior_mean1, prior_log_var1 = model.conditional_prior_z1(z2)
    p1 = D.Independent(D.Normal(prior_mean1, torch.exp(0.5 * prior_log_var1)), 1)
    return q2.log_prob(z2.unsqueeze(1)).squeeze(1) - p2.log_prob(z2), q1.log_prob(z1) - p1.log_prob(z1)


@pytest.mark.parametrize("name", ["hvae", "hvp"])
def test_hvae_kl_terms_match_monte_carlo(name: str) -> None:
    model, n = small_model(name), 20000
    for x in tiny_binary_data(2):
        x = x.unsqueeze(0)
        with torch.no_grad():
            terms = model.elbo_terms(x.expand(n, -1))
            reference = hvae_reference_kls(model, x, n)
        for key, ref in zip(["kl_z2", "kl_z1"], reference):
            ours = terms[key]
            tolerance = 4 * (ours.std() + ref.std()) / math.sqrt(n) + 1e-4
            assert abs(ours.mean() - ref.mean()) < tolerance, (key, ours.mean(), ref.mean())
            assert ref.mean() > 0
    if name == "hvae":  # closed form given x: the same for every draw
        assert terms["kl_z2"].std() < 1e-5


# --------------------------------------------------------------------------- importance weights


@pytest.mark.parametrize("name", sorted(MODELS))
def test_importance_weighted_bound_is_above_the_elbo(name: str) -> None:
    model, x = small_model(name).eval(), tiny_binary_data(16)
    with torch.no_grad():
        neg_elbo = torch.stack([model.loss(x)[1]["neg_elbo"] for _ in range(20)]).mean()
        log_w = model.log_importance_weights(x, 64)
    assert log_w.shape[0] == 16 and log_w.shape[1] >= 64
    log_likelihood = (torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1])).mean()
    assert log_likelihood >= -neg_elbo


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"cpvae", "cp1"}))
def test_mean_log_weight_is_the_elbo(name: str) -> None:
    """With the posterior as proposal, E log w = ELBO: a sign or term error shows up here."""
    model, x = small_model(name).eval(), tiny_binary_data(16)
    draws = 400
    with torch.no_grad():
        neg_elbo = torch.stack([model.loss(x)[1]["neg_elbo"] for _ in range(draws)])
        log_w = model.log_importance_weights(x, draws).mean(0)  # S batch means of log w
    tolerance = 4 * (neg_elbo.std() + log_w.std()) / math.sqrt(draws) + 0.01
    assert abs(log_w.mean() + neg_elbo.mean()) < tolerance


# --------------------------------------------------------------------------- configs


def test_pretrain_configs_build_their_models() -> None:
    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    ours = [p for p in paths if p.stem.split("_")[0] in MODELS]
    assert {p.stem.split("_")[0] for p in ours} == set(MODELS)
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    for path in ours:
        values = read_yaml(path)
        assert set(values) <= model_keys | TRAIN_KEYS, path
        config, = build_configs({k: v for k, v in values.items() if k in model_keys}, ModelConfig, source=str(path))
        assert config.model == path.stem.split("_")[0] and values["dataset"] in {"mnist", "omniglot"}
        if "categories" in values and config.model != "cp1":
            suffix = path.stem.split("_k")[-1] if "_k" in path.stem else None
            expected = int(suffix) if suffix else {"mnist": 10, "omniglot": 50}[values["dataset"]]
            assert config.categories == expected, path
        build_model(dataclasses.replace(config, hidden=8, input_dim=10))


# --------------------------------------------------------------------------- compare


def write_run(folder: Path, model: str, dataset: str, categories: int, metrics: dict, shade: float) -> Path:
    folder.mkdir(parents=True)
    config = {"model": model, "dataset": dataset, "categories": categories, "epochs": 3, "latent_dim": 40}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    torchvision.utils.save_image(torch.full((6, 1, 28, 28), shade), folder / "samples.png", nrow=3)
    return folder


def test_compare_pretrain_runs(tmp_path: Path) -> None:
    runs = [
        write_run(tmp_path / "cp", "cpvae", "mnist", 10,
                  {"test_neg_elbo": 91.234, "test_nll": 87.5, "epochs_trained": 3, "cluster_accuracy": 0.8123}, 0.2),
        write_run(tmp_path / "plain", "vae", "mnist", 10,
                  {"test_neg_elbo": 95.678, "test_nll": 90.111, "epochs_trained": 2}, 0.8),
    ]
    out = tmp_path / "figures" / "samples.png"
    table = compare_pretrain_runs(runs, out)
    assert "| model | mnist K=10 |" in table
    assert "| cpvae | 91.23 / 87.50 |" in table and "| vae | 95.68 / 90.11 |" in table
    assert "0.81" in table and "paper" not in table
    assert table.index("| cpvae |") < table.index("| vae |")
    assert out.is_file() and out.stat().st_size > 1000

    with_paper = compare_pretrain_runs(runs, None, paper=True)
    assert "| model | mnist K=10 | mnist K=150 | mnist K=500 |" in with_paper
    assert f"91.23 / 87.50 [paper {PAPER_TABLE1['cpvae', 'mnist', 10]:.2f}]" in with_paper
    assert "95.68 / 90.11 [paper 88.75]" in with_paper
    assert "— [paper 86.84]" in with_paper
    assert "omniglot" not in with_paper


def test_relu_networks_have_one_matrix_per_layer() -> None:
    """``hidden_layer: relu`` replaces each gated layer's two matrices [W; V] by W alone, and the
    encoder then computes max(0, W x + b) layer by layer."""
    gated, relu = small_model("vae"), small_model("vae", hidden_layer="relu")
    assert [p.shape for p in gated.encoder.body.parameters()] == [(64, 20), (64,), (64, 32), (64,)]
    assert [p.shape for p in relu.encoder.body.parameters()] == [(32, 20), (32,), (32, 32), (32,)]
    x = tiny_binary_data()
    first, second = relu.encoder.body[0][0], relu.encoder.body[1][0]
    expected = torch.relu(second(torch.relu(first(x))))
    torch.testing.assert_close(relu.encoder.body(x), expected)
