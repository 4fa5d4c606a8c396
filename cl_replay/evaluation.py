"""Evaluation of a trained generative model: test negative ELBO, importance-sampled NLL,
clustering accuracy of the latent categories and use of the categories (aggregated posterior)."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from .checkpoints import rng_state, save_atomic, set_rng_state
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


def _fingerprint(model: GenerativeModel, x: torch.Tensor, settings: tuple) -> str:
    """A digest of the model's weights, the data and the estimator's settings."""
    digest = hashlib.sha256(repr(settings).encode())
    for name, tensor in [*model.state_dict().items(), ("x", x)]:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load_partial(path: Path, fingerprint: str) -> list[torch.Tensor]:
    """The batches done by an interrupted estimate with this fingerprint (restoring the RNG as it
    was after them); nothing for another estimate, or for an unreadable file (it is only a cache)."""
    if not path.is_file():
        return []
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 (any unreadable file: start over)
        tqdm.write(f"log-likelihood: ignoring unreadable {path} ({error}); starting over")
        return []
    if state.get("fingerprint") != fingerprint:
        return []
    set_rng_state(state["rng"])
    return state["results"]


@torch.no_grad()
def log_likelihood(
    model: GenerativeModel,
    x: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    samples_per_call: int = 500,
    progress: bool = False,
    partial: str | Path | None = None,
) -> torch.Tensor:
    """Per-example importance-sampled log p(x) ~= log (1/S) sum_s w_s (Burda et al. 2016; the
    VampPrior paper's protocol with S = 5000), accumulated with a streaming log-sum-exp so that
    memory stays bounded. The model decides its proposal (``log_importance_weights``).

    With ``partial`` (a file) the estimate survives an interruption: after every batch the results
    so far and the random number generators' states are saved there, and a call with the same
    model, data and settings continues after the last saved batch, drawing exactly what the
    uninterrupted call would have drawn. The file is removed once the estimate is complete."""
    was_training = model.training
    model.eval()
    batches = x.split(batch_size)
    results: list[torch.Tensor] = []
    if partial is not None:
        partial = Path(partial)
        fingerprint = _fingerprint(model, x, (num_samples, batch_size, samples_per_call))
        results = _load_partial(partial, fingerprint)
    bar = tqdm(total=len(batches), initial=len(results), desc="log-likelihood", disable=not progress, leave=False)
    for batch in batches[len(results):]:
        log_total = torch.full((batch.shape[0],), -math.inf, device=batch.device)
        count, remaining = 0, num_samples
        while remaining > 0:
            log_w = model.log_importance_weights(batch, min(samples_per_call, remaining))
            log_total = torch.logaddexp(log_total, torch.logsumexp(log_w, dim=1))
            count += log_w.shape[1]
            remaining -= log_w.shape[1]
        results.append((log_total - math.log(count)).cpu())
        if partial is not None:
            save_atomic({"fingerprint": fingerprint, "results": results, "rng": rng_state()}, partial)
        bar.update(1)
    bar.close()
    if partial is not None:
        partial.unlink(missing_ok=True)
    model.train(was_training)
    return torch.cat(results).to(x.device)


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
