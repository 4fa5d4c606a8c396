"""Does the CP-VAE bound keep categories that start on the true classes? A diagnostic for
docs/clustering.md.

The default recipe restarts the categories after ``prior_init_epoch`` epochs from k-means on the
posterior means (``CPVAE.initialise_categories``). This script trains the same model with the same
config, but restarts the categories from the *true* digit classes instead (the same procedure with
the class labels as the partition: priors at the class means of the posterior means, q(c|x)
fitted to the classes). Everything else, including the objective (the paper's ELBO), is unchanged,
and the labels are used at that one epoch only. Comparing it with the k-means run of the same
config tells whether a label-aligned partition is one the bound keeps and prefers (then the
k-means start is what limits the cluster accuracy), or one it moves away from.

    python benchmarks/clustering_oracle.py --config configs/clustering/gumbel_kmeans.yaml \\
        --seed 0 --out ~/runs/screen/oracle-gumbel_kmeans-s0 --data-root ../shared/datasets
    python benchmarks/clustering_oracle.py --resume ~/runs/screen/oracle-gumbel_kmeans-s0 --data-root ../shared/datasets

``--probe RUN_DIR`` asks the other half of the question on a trained CP-VAE run (its
``checkpoints/last.pt``): how well does k-means (best of 5 k-means++ runs, as the restart uses)
cluster the validation images' posterior means, encoder features, their first 10 principal
components and the standardised posterior means into 10 clusters (Hungarian accuracy), how well
does the restart of ``prior_init: umap`` (a Gaussian mixture on a UMAP embedding of the posterior
means) partition them, and how pure are 50 k-means clusters of the posterior means (share of
images in their cluster's majority class)?

    python benchmarks/clustering_oracle.py --probe ~/runs/full/cpvae-mnist-s0 --data-root ../shared/datasets

The run folder is a normal ``cl-replay pretrain`` folder (metrics.json with the test negative
ELBO and cluster accuracy, TensorBoard with the validation cluster accuracy of every epoch), so
``benchmarks/clustering_ablation.py --progress`` and ``cl-replay compare`` read it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cl_replay.config import build_configs, read_yaml
from cl_replay.data import load_dataset
from cl_replay.models.cpvae import CPVAE
from cl_replay.settings import ModelConfig, TrainConfig
from cl_replay.trainer import pretrain


def restart_from_classes(labels: torch.Tensor):
    """A ``CPVAE.end_epoch`` that restarts the categories from ``labels`` (the training set's
    classes, in the trainer's order) at ``prior_init_epoch`` instead of from k-means."""

    def end_epoch(model: CPVAE, epoch: int, training_inputs) -> dict[str, float]:
        if epoch != model.config.prior_init_epoch:
            return {}
        return model.initialise_categories(training_inputs(), labels=labels)

    return end_epoch


@torch.no_grad()
def kmeans_probe(run_dir: Path, data_root: str | None) -> dict[str, float]:
    """k-means accuracy (10 clusters) of a trained CP-VAE's representations of the validation
    images, its own argmax q(c|x) accuracy, and the purity of 50 k-means clusters."""
    from cl_replay.evaluation import cluster_accuracy
    from cl_replay.models import build_model
    from cl_replay.models.cpvae import best_kmeans, umap_partition
    from cl_replay.trainer import load_checkpoint

    model_config, train_config = build_configs(read_yaml(run_dir / "config.yaml"), ModelConfig, TrainConfig,
                                               source=str(run_dir / "config.yaml"))
    splits = load_dataset(train_config.dataset, data_root or train_config.data_root, download=train_config.download)
    model_config.input_dim = splits.val.x.shape[1]
    model = build_model(model_config)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt", torch.device("cpu"))
    model.load_state_dict(state["model"])
    model.eval()
    y = splits.val.y.numpy()
    h, log_pi = model.encode(splits.val.x)
    means = (log_pi.exp().unsqueeze(-1) * model.posterior(h)[0]).sum(1)
    centred = means - means.mean(0)
    components = torch.pca_lowrank(centred, q=10, center=False)[2]
    representations = {"posterior means": means, "encoder features": h, "10 principal components": centred @ components,
                       "standardised posterior means": centred / means.std(0)}
    report = {"epoch": state["epoch"], "argmax q(c|x)": cluster_accuracy(log_pi.argmax(1).numpy(), y)[0]}
    for name, features in representations.items():
        report[f"k-means on {name}"] = cluster_accuracy(best_kmeans(features.double().numpy(), 10, 5, 0)[1], y)[0]
    report["Gaussian mixture on the UMAP embedding of the posterior means (prior_init: umap)"] = cluster_accuracy(
        umap_partition(means.double().numpy(), 10, seed=0), y)[0]
    labels = best_kmeans(means.double().numpy(), 50, 5, 0)[1]
    report["purity of 50 k-means clusters"] = sum(
        int(np.bincount(y[labels == j]).max()) for j in set(labels.tolist())) / len(y)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a clustering config with a restart (prior_init: kmeans or umap), e.g. configs/clustering/gumbel_kmeans.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="run folder")
    parser.add_argument("--resume", type=Path, help="continue the run in this folder")
    parser.add_argument("--data-root")
    parser.add_argument("--probe", type=Path, help="k-means probe of a trained CP-VAE run folder (see above)")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(kmeans_probe(args.probe, args.data_root), indent=1))
        return
    if not (args.resume or (args.config and args.out)):
        parser.error("give --config and --out, or --resume RUN_DIR")
    run_dir = args.resume or args.out
    values = read_yaml(run_dir / "config.yaml") if args.resume else read_yaml(Path(args.config)) | {"seed": args.seed}
    if args.data_root:
        values["data_root"] = args.data_root
    model_config, train_config = build_configs(values, ModelConfig, TrainConfig, source=str(args.config or run_dir))
    if model_config.model != "cpvae" or model_config.prior_init == "normal":
        parser.error("the config must train a cpvae with a restart, prior_init: kmeans or umap (the restart this script replaces)")
    splits = load_dataset(train_config.dataset, train_config.data_root, download=train_config.download)
    if int(splits.train.y.max()) >= model_config.categories:
        parser.error(f"K = {model_config.categories} categories cannot hold {int(splits.train.y.max()) + 1} classes")
    labels = splits.train.y[: train_config.limit] if train_config.limit > 0 else splits.train.y  # as pretrain trains
    CPVAE.end_epoch = restart_from_classes(labels)
    metrics = pretrain(model_config, train_config, run_dir, resume=bool(args.resume))
    print(json.dumps({k: metrics[k] for k in ("test_neg_elbo", "cluster_accuracy", "categories_in_use",
                                              "epochs_trained") if k in metrics}, indent=1))


if __name__ == "__main__":
    main()
