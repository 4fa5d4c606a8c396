"""Evaluation of a trained generative model: test negative ELBO, importance-sampled NLL,
clustering accuracy of the latent categories and use of the categories (aggregated posterior)."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from .models.base import GenerativeModel


@torch.no_grad()
def elbo_terms(model: GenerativeModel, x: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Dataset means of every ELBO term and of ``neg_elbo``, single-sample, in evaluation mode."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    for batch in x.split(batch_size):
        _, terms = model.loss(batch)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value * batch.shape[0]
    model.train(was_training)
    return {name: float(total) / x.shape[0] for name, total in sums.items()}


@torch.no_grad()
def log_likelihood(
    model: GenerativeModel,
    x: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    samples_per_call: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """Per-example importance-sampled log p(x) ~= log (1/S) sum_s w_s (Burda et al. 2016; the
    VampPrior paper's protocol with S = 5000), accumulated with a streaming log-sum-exp so that
    memory stays bounded. The model decides its proposal (``log_importance_weights``)."""
    was_training = model.training
    model.eval()
    results = []
    for batch in tqdm(x.split(batch_size), desc="log-likelihood", disable=not progress, leave=False):
        log_total = torch.full((batch.shape[0],), -math.inf, device=batch.device)
        count, remaining = 0, num_samples
        while remaining > 0:
            log_w = model.log_importance_weights(batch, min(samples_per_call, remaining))
            log_total = torch.logaddexp(log_total, torch.logsumexp(log_w, dim=1))
            count += log_w.shape[1]
            remaining -= log_w.shape[1]
        results.append(log_total - math.log(count))
    model.train(was_training)
    return torch.cat(results)


def cluster_accuracy(clusters: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """Accuracy of cluster indices against class labels after mapping clusters to labels.

    Hungarian matching (a one-to-one map maximising agreement, scipy's linear_sum_assignment) when
    there are no more clusters than classes; with more clusters than classes, majority mapping
    (each cluster takes its most frequent label). Returns (accuracy, "hungarian" | "majority").
    """
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    n_clusters, n_classes = int(clusters.max()) + 1, int(labels.max()) + 1
    counts = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(counts, (clusters, labels), 1)
    if n_clusters <= n_classes:
        rows, cols = linear_sum_assignment(counts, maximize=True)
        return float(counts[rows, cols].sum()) / len(labels), "hungarian"
    return float(counts.max(axis=1).sum()) / len(labels), "majority"


def category_usage(q_c: torch.Tensor, threshold: float = 1e-3) -> dict[str, float | int | list[float]]:
    """The aggregated posterior q(c), its entropy (nats) and the number of categories with q(c_k) > threshold."""
    q = q_c.detach().double().cpu()
    entropy = float(-(q[q > 0] * q[q > 0].log()).sum())
    return {"q_c": [round(float(v), 6) for v in q], "q_c_entropy": entropy, "categories_in_use": int((q > threshold).sum())}
