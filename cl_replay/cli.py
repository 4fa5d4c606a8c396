"""The ``cl-replay`` command line: ``pretrain`` a generative model, ``run`` a continual-learning
stream, ``compare`` runs, check and fetch the ``data``.

Every command checks its names, numbers and folders first, without importing torch, torchvision or
Avalanche (``checks``): a refusal is quick and leaves nothing behind."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from .checks import (DATASETS, HIDDEN_LAYERS, MODELS, ON_NAN, check_choice, check_device, check_numbers,
                     check_resumable, check_run_folder, is_writable)
from .config import ConfigError, build_configs, read_yaml, resolve_config
from .settings import ModelConfig, TrainConfig


@click.group()
@click.version_option(package_name="cl-replay")
def main() -> None:
    """cl-replay: continual learning with generative replay from a conditional-prior VAE."""


def _flags(**flags: Any) -> dict[str, Any]:
    return {key: value for key, value in flags.items() if value is not None}


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file, e.g. configs/pretrain/cpvae_mnist.yaml (or just cpvae_mnist: the installed copy).")
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
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--no-download", "download", flag_value=False, default=None,
              help="Never download missing datasets (default: download them into a writable data root).")
@click.option("--on-nan", type=click.Choice(["stop", "skip"]),
              help="A non-finite loss stops training (default) or skips that step.")
@click.option("--compile", "compile", flag_value=True, default=None,
              help="Train through torch.compile (needs a C++ compiler on CPU; the first steps wait for it).")
def pretrain(config_file: str | None, out: str | None, resume: str | None, **flags: Any) -> None:
    """Train a generative model on a static dataset and evaluate it (test neg. ELBO, NLL, clustering)."""
    values: dict[str, Any] = {}
    try:
        if resume:
            check_resumable(Path(resume), "checkpoints/last.pt")
            values.update(read_yaml(Path(resume) / "config.yaml"))
        if config_file:
            values.update(read_yaml(resolve_config(config_file, "pretrain")))
        values.update(_flags(**flags))
        _check_pretrain(values)
        run_dir = Path(resume or out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{values.get('model', 'cpvae')}-"
                                          f"{values.get('dataset', 'mnist')}")
        if not resume:
            check_run_folder(run_dir, "checkpoints/last.pt")
        model_config, train_config = build_configs(values, ModelConfig, TrainConfig, source=config_file or "flags")
    except ConfigError as error:
        raise click.UsageError(str(error)) from error

    from .divergence import DivergenceError
    from .trainer import CheckpointError, pretrain as run_pretraining

    try:
        metrics = run_pretraining(model_config, train_config, run_dir, resume=bool(resume))
    except (CheckpointError, DivergenceError, OSError, RuntimeError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    except KeyboardInterrupt:
        raise SystemExit(130)
    for key in ("test_neg_elbo", "test_nll", "cluster_accuracy", "cluster_matching", "categories_in_use", "q_c_entropy", "epochs_trained"):
        if key in metrics:
            click.echo(f"{key:>18}: {metrics[key]}")
    click.echo(f"metrics, checkpoints and pictures in {run_dir}")


def _check_pretrain(values: dict[str, Any]) -> None:
    """Names and numbers of ``cl-replay pretrain``, before anything is loaded or written."""
    check_choice("model", values.get("model", "cpvae"), MODELS)
    check_choice("dataset", str(values.get("dataset", "mnist")).lower().replace("-", "_"), DATASETS)
    check_choice("on_nan", values.get("on_nan", "stop"), ON_NAN)
    check_choice("hidden_layer", values.get("hidden_layer", "gated"), HIDDEN_LAYERS)
    check_device(str(values.get("device", "auto")))
    check_numbers(values, positive=("epochs", "batch_size", "lr", "categories", "latent_dim", "hidden", "patience"),
                  non_negative=("warmup", "is_samples", "limit"))


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


@main.command()
@click.option("--data-root", help="Data root to look in (else $CL_REPLAY_DATA, else the user cache).")
@click.option("--download", is_flag=True, help="Download the missing datasets with torchvision (progress bars).")
def data(data_root: str | None, download: bool) -> None:
    """List MNIST, Fashion-MNIST and Omniglot under the data root as present, missing or corrupt."""
    from .data import DatasetError, dataset_status, download_dataset, resolve_data_root

    root = resolve_data_root(data_root)
    click.echo(f"data root: {root}{'' if is_writable(root) else '   (read-only)'}")
    failed = []
    for name in DATASETS:
        state, detail = dataset_status(name, root)
        if state == "missing" and download:
            try:
                download_dataset(name, root)
                state, detail = dataset_status(name, root)
            except DatasetError as error:
                failed.append(name)
                detail = str(error)
        click.echo(f"{name:<14} {state:<8} {detail}")
    if failed:
        raise click.ClickException(f"could not download {', '.join(failed)} (see above)")


def _add_continual_learning_command() -> None:
    from strategies.cli import run

    main.add_command(run)


_add_continual_learning_command()


def _add_sweep_command() -> None:
    from .sweep.command import sweep  # click only; Ray, torch and the rest load when a sweep runs

    main.add_command(sweep)


_add_sweep_command()
