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
