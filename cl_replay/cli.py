"""The ``cl-replay`` command line: ``pretrain`` a generative model, ``run`` a continual-learning
stream, ``compare`` runs."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from .config import ConfigError, build_configs, read_yaml
from .models.base import ModelConfig
from .trainer import CheckpointError, TrainConfig, pretrain as run_pretraining


@click.group()
@click.version_option(package_name="cl-replay")
def main() -> None:
    """cl-replay: continual learning with generative replay from a conditional-prior VAE."""


def _flags(**flags: Any) -> dict[str, Any]:
    return {key: value for key, value in flags.items() if value is not None}


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file, e.g. configs/pretrain/cpvae_mnist.yaml.")
@click.option("--model", help="cpvae, cp1, vae, mog, vampprior, flowprior, hvae or hvp.")
@click.option("--dataset", help="mnist, fashion_mnist or omniglot.")
@click.option("--data-root", help="Folder holding MNIST/raw, FashionMNIST/raw, omniglot-py (else $CL_REPLAY_DATA, else the user cache).")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default runs/<timestamp>-<model>-<dataset>).")
@click.option("--resume", type=click.Path(file_okay=False, exists=True), help="Continue the interrupted run in this folder.")
@click.option("--epochs", type=int, help="Maximum number of epochs (default 1000).")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--categories", type=int, help="K: categories, mixture components or pseudo-inputs.")
@click.option("--latent-dim", type=int)
@click.option("--warmup", type=int, help="Epochs of KL warm-up (beta from 0 to 1).")
@click.option("--patience", type=int, help="Early-stopping patience in epochs, counted after warm-up.")
@click.option("--is-samples", type=int, help="Importance samples for the test NLL (default 5000; 0 skips it).")
@click.option("--seed", type=int)
@click.option("--limit", type=int, help="Train on the first N training examples only (smoke runs).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
def pretrain(config_file: str | None, out: str | None, resume: str | None, **flags: Any) -> None:
    """Train a generative model on a static dataset and evaluate it (test neg. ELBO, NLL, clustering)."""
    values: dict[str, Any] = {}
    if resume:
        values.update(read_yaml(Path(resume) / "config.yaml"))
    if config_file:
        values.update(read_yaml(config_file))
    values.update(_flags(**flags))
    try:
        model_config, train_config = build_configs(values, ModelConfig, TrainConfig, source=config_file or "flags")
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    run_dir = Path(resume or out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{model_config.model}-{train_config.dataset}")
    click.echo(f"run folder: {run_dir}   (tensorboard --logdir {run_dir})")
    try:
        metrics = run_pretraining(model_config, train_config, run_dir, resume=bool(resume))
    except (CheckpointError, ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    except KeyboardInterrupt:
        raise SystemExit(130)
    for key in ("test_neg_elbo", "test_nll", "cluster_accuracy", "cluster_matching", "categories_in_use", "q_c_entropy", "epochs_trained"):
        if key in metrics:
            click.echo(f"{key:>18}: {metrics[key]}")
    click.echo(f"metrics, checkpoints and pictures in {run_dir}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out_png", type=click.Path(dir_okay=False), default="comparison.png", show_default=True,
              help="Side-by-side PNG of the pretraining runs' sample grids.")
@click.option("--paper/--no-paper", default=True, help="Show the CP-VAE paper's Table 1 beside pretraining runs.")
def compare(run_dirs: tuple[str, ...], out_png: str, paper: bool) -> None:
    """Markdown tables of pretraining runs (metrics.json) and continual-learning runs (results.json)."""
    from .compare import compare_pretrain_runs
    from strategies.summary import summarize_cl_runs

    paths = [Path(d) for d in run_dirs]
    pretrain_runs = [p for p in paths if (p / "metrics.json").is_file()]
    cl_runs = [p for p in paths if (p / "results.json").is_file()]
    unknown = sorted(set(paths) - set(pretrain_runs) - set(cl_runs))
    if unknown:
        raise click.UsageError(f"no metrics.json or results.json in: {', '.join(map(str, unknown))}")
    if pretrain_runs:
        click.echo(compare_pretrain_runs(pretrain_runs, Path(out_png), paper=paper))
        click.echo(f"\nsample grids side by side: {out_png}")
    if cl_runs:
        click.echo(summarize_cl_runs(cl_runs))


def _add_continual_learning_command() -> None:
    from strategies.cli import run

    main.add_command(run)


_add_continual_learning_command()
