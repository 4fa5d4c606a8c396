"""``cl-replay run STREAM --generator NAME ...``: one continual-learning run (the main CLI group in
``cl_replay.cli`` adds this command). Also runnable alone: ``python -m strategies.cli STREAM ...``.

Heavy imports (Avalanche, torch models) happen inside the command, so loading the CLI stays fast.
"""
from __future__ import annotations

from typing import Any

import click

STREAM_NAMES = ("split_mnist", "split_fashion_mnist", "split_omniglot")


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    parsed: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            parsed[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            parsed[key] = raw
    return parsed


@click.command("run")
@click.argument("stream")
@click.option("--generator", "-g", help="cpvae, vae, mog, vampprior, ... (any registered model), or none, joint, buffer.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file (default configs/cl/<STREAM>.yaml when it exists).")
@click.option("--iterations", type=int, help="Classifier (and generator) iterations per experience (default 2000).")
@click.option("--seed", type=int, help="Seed of weights, sampling and (seed != 0) the class order.")
@click.option("--scenario", type=click.Choice(["class", "task"]), help="class- (default) or task-incremental.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--data-root", help="Folder with MNIST/raw, FashionMNIST/raw, omniglot-py (else $CL_REPLAY_DATA).")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default runs/<timestamp>-cl-<stream>-<generator>).")
@click.option("--replay-labels", type=click.Choice(["hard", "soft"]), help="Labels of replay from the previous classifier.")
@click.option("--categories", type=int, help="Generator categories K (CP-VAE) / components.")
@click.option("--n-experiences", type=int, help="Number of experiences (Omniglot: the first N alphabets).")
@click.option("--eval-split", type=click.Choice(["test", "val"]), help="Evaluate on the test set or the validation split.")
@click.option("--threads", type=int, help="torch threads (default 1: two single-threaded workers use 2 cores best).")
@click.option("--set", "set_values", multiple=True, metavar="KEY=VALUE",
              help="Any other config key, e.g. --set gen_kl_warmup=500 (repeatable).")
@click.option("--no-progress", is_flag=True, help="No tqdm progress bar.")
def run(stream: str, config_file: str | None, set_values: tuple[str, ...], no_progress: bool, **flags: Any) -> None:
    """Continual learning on STREAM (split_mnist, split_fashion_mnist, split_omniglot) with a
    replay generator; writes results.json, plots and TensorBoard logs to the run folder."""
    from cl_replay.config import ConfigError

    if stream not in STREAM_NAMES:
        raise click.BadParameter(f"unknown stream {stream!r}; choose one of: {', '.join(STREAM_NAMES)}",
                                 param_hint="STREAM")
    overrides = _parse_set(set_values)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if no_progress:
        overrides["progress"] = False

    from .run import available_generators, load_config, run_experiment

    generator = overrides.get("generator")
    if generator is not None and generator not in available_generators():
        raise click.BadParameter(f"unknown generator {generator!r}; choose one of: {', '.join(available_generators())}",
                                 param_hint="--generator")
    try:
        cl, model = load_config(stream, config_file, overrides)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    from cl_replay.data import DatasetError

    from .streams import StreamError

    try:
        run_experiment(cl, model, echo=click.echo)
    except (ConfigError, DatasetError, StreamError) as error:
        raise click.ClickException(str(error)) from error
    except KeyboardInterrupt:
        raise SystemExit(130)


if __name__ == "__main__":
    run()
