"""``cl-replay run STREAM --generator NAME ...``: one continual-learning run (the main CLI group in
``cl_replay.cli`` adds this command). Also runnable alone: ``python -m strategies.cli STREAM ...``.

Names, numbers and folders are checked first; heavy imports (Avalanche, torch models) happen only
once the work starts, so loading the CLI and refusing bad input stay fast.
"""
from __future__ import annotations

from typing import Any

import click



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


RESUME_FLAGS = ("data_root", "device", "threads", "download", "progress", "on_nan")
"""Settings a resumed run may change: where the data is and how the machine is used, not the protocol."""


@click.command("run")
@click.argument("stream", required=False)
@click.option("--generator", "-g", help="cpvae, vae, mog, vampprior, ... (any registered model), or none, joint, buffer.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file (default: the packaged configs/cl/<STREAM>.yaml).")
@click.option("--iterations", type=int, help="Classifier (and generator) iterations per experience (default 2000).")
@click.option("--seed", type=int, help="Seed of weights, sampling and (seed != 0) the class order.")
@click.option("--scenario", help="class- (default) or task-incremental.")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--data-root", help="Folder with MNIST/raw, FashionMNIST/raw, omniglot-py (else $CL_REPLAY_DATA).")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default runs/<timestamp>-cl-<stream>-<generator>).")
@click.option("--resume", type=click.Path(file_okay=False, exists=True),
              help="Continue the run in this folder after its last finished experience.")
@click.option("--replay-labels", type=click.Choice(["hard", "soft"]), help="Labels of replay from the previous classifier.")
@click.option("--replay-balance", type=click.Choice(["none", "class"]),
              help="Replay categories in proportion to q(c) (none) or weighted so that the replay's labels are uniform over the classes seen (class).")
@click.option("--categories", type=int, help="Generator categories K (CP-VAE) / components.")
@click.option("--n-experiences", type=int, help="Number of experiences (Omniglot: the first N alphabets).")
@click.option("--eval-split", type=click.Choice(["test", "val"]), help="Evaluate on the test set or the validation split.")
@click.option("--threads", type=int, help="torch threads (default 1: two single-threaded workers use 2 cores best).")
@click.option("--no-download", "download", flag_value=False, default=None,
              help="Never download missing datasets (default: download them into a writable data root).")
@click.option("--on-nan", type=click.Choice(["stop", "skip"]),
              help="A non-finite loss stops the run (default; the last finished experience stays saved) or skips that step.")
@click.option("--set", "set_values", multiple=True, metavar="KEY=VALUE",
              help="Any other config key, e.g. --set gen_kl_warmup=500 (repeatable).")
@click.option("--no-progress", is_flag=True, help="No tqdm progress bar.")
def run(stream: str | None, config_file: str | None, resume: str | None, set_values: tuple[str, ...],
        no_progress: bool, **flags: Any) -> None:
    """Continual learning on STREAM (split_mnist, split_fashion_mnist, split_omniglot) with a
    replay generator; writes results.json, plots and TensorBoard logs to the run folder.
    ``--resume RUN_DIR`` continues an interrupted run after its last finished experience."""
    from pathlib import Path

    from cl_replay.checks import check_resumable, check_run_folder
    from cl_replay.config import ConfigError, read_yaml

    from .config import RESUME_STATE, configs_from_values, run_values

    overrides = _parse_set(set_values)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if no_progress:
        overrides["progress"] = False
    try:
        if resume:
            check_resumable(Path(resume), RESUME_STATE)
            values, source = read_yaml(Path(resume) / "config.yaml"), str(Path(resume) / "config.yaml")
            fixed = sorted(set(overrides) - set(RESUME_FLAGS)) + (["--config"] if config_file else [])
            if fixed or stream not in (None, values.get("stream")):
                raise ConfigError(f"--resume continues {resume} as it was configured; drop "
                                  f"{', '.join(fixed) or 'STREAM'} (it may change only {', '.join(RESUME_FLAGS)})")
            values.update(overrides, out=resume)  # the folder as named now, wherever the run started
        elif stream is None:
            raise ConfigError("missing STREAM: split_mnist, split_fashion_mnist or split_omniglot (or --resume RUN_DIR)")
        else:
            values, source = run_values(stream, config_file, overrides)
            check_run_folder(Path(values.get("out") or "runs"), RESUME_STATE)  # runs/: the default's parent
        cl, model = configs_from_values(values, source)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error

    from cl_replay.data import DatasetError
    from cl_replay.divergence import DivergenceError

    from .run import run_experiment
    from .streams import StreamError

    try:
        run_experiment(cl, model, echo=click.echo, resume=bool(resume))
    except (ConfigError, DatasetError, DivergenceError, StreamError, OSError) as error:
        raise click.ClickException(str(error)) from error
    except KeyboardInterrupt:
        raise SystemExit(130)


if __name__ == "__main__":
    run()
