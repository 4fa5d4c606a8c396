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

The run folder is a normal ``cl-replay pretrain`` folder (metrics.json with the test negative
ELBO and cluster accuracy, TensorBoard with the validation cluster accuracy of every epoch), so
``benchmarks/clustering_ablation.py --progress`` and ``cl-replay compare`` read it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a clustering config (prior_init: kmeans), e.g. configs/clustering/gumbel_kmeans.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="run folder")
    parser.add_argument("--resume", type=Path, help="continue the run in this folder")
    parser.add_argument("--data-root")
    args = parser.parse_args()
    if not (args.resume or (args.config and args.out)):
        parser.error("give --config and --out, or --resume RUN_DIR")
    run_dir = args.resume or args.out
    values = read_yaml(run_dir / "config.yaml") if args.resume else read_yaml(Path(args.config)) | {"seed": args.seed}
    if args.data_root:
        values["data_root"] = args.data_root
    model_config, train_config = build_configs(values, ModelConfig, TrainConfig, source=str(args.config or run_dir))
    if model_config.model != "cpvae" or model_config.prior_init != "kmeans":
        parser.error("the config must train a cpvae with prior_init: kmeans (the restart this script replaces)")
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
