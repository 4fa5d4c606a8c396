"""Clustering accuracy, streaming log-likelihood and category usage."""
import math

import numpy as np
import pytest
import torch

from cl_replay.evaluation import category_usage, cluster_accuracy, log_likelihood
from cl_replay.models.base import GenerativeModel


def test_hungarian_accuracy_of_a_permuted_labelling_is_one():
    labels = np.random.default_rng(0).integers(0, 10, size=500)
    permutation = np.random.default_rng(1).permutation(10)
    assert cluster_accuracy(permutation[labels], labels) == (1.0, "hungarian")


def test_hungarian_matching_is_one_to_one():
    # clusters 0 and 1 are both mostly label 0: only one of them may be mapped to it
    clusters = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([0, 0, 1, 0, 0, 1])
    assert cluster_accuracy(clusters, labels) == (pytest.approx(3 / 6), "hungarian")


def test_majority_mapping_when_there_are_more_clusters_than_classes():
    clusters = np.array([0, 0, 1, 1, 2, 2, 2])
    labels = np.array([0, 0, 1, 0, 1, 1, 0])
    accuracy, method = cluster_accuracy(clusters, labels)
    assert method == "majority" and accuracy == pytest.approx((2 + 1 + 2) / 7)


class FixedWeights(GenerativeModel):
    """A fake model whose importance weights are a fixed table, handed out in order."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table, self.used = table, 0

    def log_importance_weights(self, x, num_samples):
        chunk = self.table[: x.shape[0], self.used : self.used + num_samples]
        self.used += num_samples
        return chunk


def test_streaming_log_likelihood_equals_one_log_mean_exp():
    table = torch.randn(4, 1000) * 30
    estimate = log_likelihood(FixedWeights(table), torch.zeros(4, 1), num_samples=1000, batch_size=4, samples_per_call=70)
    torch.testing.assert_close(estimate, torch.logsumexp(table, 1) - math.log(1000))


def test_category_usage():
    usage = category_usage(torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert usage["categories_in_use"] == 2
    assert usage["q_c_entropy"] == pytest.approx(math.log(2))
    assert sum(usage["q_c"]) == pytest.approx(1.0)


def test_an_interrupted_log_likelihood_goes_on_after_its_last_batch_and_draws_the_same(tmp_path):
    from cl_replay.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(model="cpvae", input_dim=16, latent_dim=2, hidden=8, categories=3))
    x = (torch.rand(40, 16) > 0.5).float()
    settings = dict(num_samples=20, batch_size=10, samples_per_call=10)
    torch.manual_seed(1)
    uninterrupted = log_likelihood(model, x, **settings)

    partial = tmp_path / "nll_partial.pt"
    calls = {"n": 0}
    original = model.log_importance_weights

    def stop_in_the_third_batch(batch, num_samples):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(batch, num_samples)

    model.log_importance_weights = stop_in_the_third_batch
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        log_likelihood(model, x, partial=partial, **settings)
    assert len(torch.load(partial, weights_only=False)["results"]) == 2
    model.log_importance_weights = original
    torch.manual_seed(123)  # the saved generator state, not this one, continues the estimate
    counted = {"n": 0}

    def count(batch, num_samples):
        counted["n"] += 1
        return original(batch, num_samples)

    model.log_importance_weights = count
    resumed = log_likelihood(model, x, partial=partial, **settings)
    assert counted["n"] == 4  # batches 3 and 4 only, two calls each
    assert torch.equal(resumed, uninterrupted) and not partial.exists()


def test_a_partial_log_likelihood_of_another_model_or_an_unreadable_one_is_not_used(tmp_path):
    from cl_replay.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", input_dim=16, latent_dim=2, hidden=8))
    x = (torch.rand(20, 16) > 0.5).float()
    partial = tmp_path / "nll_partial.pt"
    torch.save({"fingerprint": "another model", "results": [torch.zeros(10)], "rng": None}, partial)
    torch.manual_seed(1)
    fresh = log_likelihood(model, x, num_samples=10, batch_size=10)
    torch.manual_seed(1)
    assert torch.equal(log_likelihood(model, x, num_samples=10, batch_size=10, partial=partial), fresh)
    partial.write_bytes(b"not a checkpoint")
    torch.manual_seed(1)
    assert torch.equal(log_likelihood(model, x, num_samples=10, batch_size=10, partial=partial), fresh)
