"""How the UMAP restart of CP-VAE's categories partitions a run's data, fit by fit.

    python benchmarks/restart_partitions.py ~/runs/full/cpvae-mnist-s1 --data-root ../shared/datasets --out ~/runs/restart/s1

Replays the run's first ``prior_init_epoch`` epochs (its ``config.yaml``, same seed: on the same
machine the same bits) up to the restart, keeps the posterior means the restart partitions, and
stops there. On their UMAP embedding (``umap_embedding``, as the restart computes it) it fits the
K-component Gaussian mixture from ``--fits`` initialisations one at a time and prints, for each,
the mean log-likelihood of the embedding under the fit, the shares of the largest and smallest
group and the Hungarian accuracy of the partition against the training labels (labels are used for
this report only), then the partition the restart itself takes (``mixture_partition``: the most
likely of 10 fits). The means and the embedding are saved under ``--out`` so that a second call
skips the replay and the embedding.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


class RestartReached(Exception):
    """Raised in place of the restart's partition: the replay has what it came for."""


def capture_restart_points(run_dir: Path, out: Path, data_root: str | None) -> np.ndarray:
    """The posterior means that the run's restart partitions, by replaying the run up to it."""
    import cl_replay.models.cpvae as cpvae
    from cl_replay.cli import main

    captured: dict[str, np.ndarray] = {}

    def capture(points: np.ndarray, *args) -> np.ndarray:
        captured["points"] = points
        raise RestartReached

    cpvae.umap_partition = capture
    args = ["pretrain", "--config", str(run_dir / "config.yaml"), "--is-samples", "0", "--out", str(out / "replay")]
    try:
        main(args + (["--data-root", data_root] if data_root else []), standalone_mode=False)
    except RestartReached:
        pass
    if "points" not in captured:
        raise SystemExit(f"{run_dir}: the replay ended without a UMAP restart (prior_init must be umap)")
    return captured["points"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="A cpvae pretraining run folder (its config.yaml).")
    parser.add_argument("--out", type=Path, required=True, help="Folder for the replay, the means and the embedding.")
    parser.add_argument("--data-root")
    parser.add_argument("--fits", type=int, default=8, help="Mixture initialisations to report (default 8).")
    args = parser.parse_args()

    from sklearn.mixture import GaussianMixture

    from cl_replay import evaluation
    from cl_replay.config import read_yaml
    from cl_replay.data import load_dataset
    from cl_replay.models.cpvae import mixture_partition, umap_embedding

    args.out.mkdir(parents=True, exist_ok=True)
    config = read_yaml(args.run_dir / "config.yaml")
    means_file, embedding_file = args.out / "restart_means.npy", args.out / "restart_embedding.npy"
    if not means_file.exists():
        np.save(means_file, capture_restart_points(args.run_dir, args.out, args.data_root))
    points = np.load(means_file)
    if not embedding_file.exists():
        np.save(embedding_file, umap_embedding(points, seed=0))
    embedding = np.load(embedding_file)
    labels = load_dataset(config["dataset"], args.data_root or config.get("data_root") or None).train.y.numpy()
    k = int(config["categories"])

    def describe(partition: np.ndarray) -> str:
        shares = np.bincount(partition, minlength=k) / len(partition)
        accuracy = evaluation.cluster_accuracy(partition, labels)[0]
        return f"{100 * shares.max():.1f}% | {100 * shares.min():.1f}% | {100 * accuracy:.1f}%"

    print(f"{args.run_dir.name}: {len(points)} posterior means, K = {k}\n")
    print("| mixture initialisation (random_state) | mean log-likelihood | largest group | smallest group | "
          "cluster accuracy |\n|---|---:|---:|---:|---:|")
    for state in range(args.fits):
        fit = GaussianMixture(k, covariance_type="full", random_state=state).fit(embedding)
        print(f"| {state} | {fit.score(embedding):.4f} | {describe(fit.predict(embedding))} |")
    chosen = mixture_partition(embedding, k, seed=0)
    print(f"| the restart's choice (`mixture_partition`, 10 fits) | – | {describe(chosen)} |")


if __name__ == "__main__":
    main()
