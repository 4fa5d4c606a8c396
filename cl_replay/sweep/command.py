"""``cl-replay sweep SPEC``: every cell of a spec as a Ray task (the main CLI group in
``cl_replay.cli`` adds this command). Only click is imported until the command runs."""
from __future__ import annotations

from pathlib import Path

import click

INSTALL_HINT = 'the sweep command needs Ray: pip install -e ".[sweep]"  (or: pip install "ray>=2.9")'


@click.command("sweep")
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Sweep folder (default runs/sweeps/<SPEC name>).")
@click.option("--data-root", help="Data root of every cell (a path every Ray node sees); not part of the config hash.")
@click.option("--address", help="Join this Ray cluster (else $RAY_ADDRESS; else a local Ray on every core).")
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), default=0, show_default=True,
              help="GPUs of each trial (fractions share a GPU).")
@click.option("--max-concurrent", type=click.IntRange(min=1), help="At most this many cells at once.")
@click.option("--set", "set_values", multiple=True, metavar="KEY=VALUE",
              help="Replace a base key of the spec, e.g. --set epochs=10 (repeatable; part of the config hash).")
@click.option("--dry-run", is_flag=True, help="List the cells and what running the sweep would do with each.")
def sweep(spec_file: str, out: str | None, data_root: str | None, address: str | None, gpus_per_trial: float,
          max_concurrent: int | None, set_values: tuple[str, ...], dry_run: bool) -> None:
    """Run every cell of the sweep SPEC (a command, a base config and axes, see configs/sweeps/;
    a name such as table1_mnist is the installed copy).

    Running the same sweep again skips finished cells, resumes unfinished ones (pretraining from
    its last checkpoint, continual learning after its last finished experience) and refuses a
    cell folder that holds another config. Writes results.md and results.png to the sweep folder.
    """
    from cl_replay.config import ConfigError
    from strategies.cli import _parse_set

    from .cells import CellState
    from .spec import expand, load_spec

    try:
        spec = load_spec(spec_file, _parse_set(set_values))
        cells = expand(spec, str(Path(data_root).resolve()) if data_root else None)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    sweep_dir = Path(out or Path("runs") / "sweeps" / spec.path.stem)
    from .runner import plan

    states = plan(cells, sweep_dir)
    conflicts = [f"  {name}: {reason}" for name, (state, reason) in states.items() if state is CellState.CONFLICT]
    if conflicts:
        raise click.ClickException("cells whose folder cannot be reused (use another --out, or delete them):\n"
                                   + "\n".join(conflicts))
    if dry_run:
        for name, (state, _) in states.items():
            click.echo(f"{state.value:>7}  {sweep_dir / name}")
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise click.ClickException(INSTALL_HINT) from None
    from .runner import ClusterError, run_sweep

    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.yaml").write_text(spec.path.read_text())
    click.echo(f"sweep folder: {sweep_dir}   ({len(cells)} cells, tensorboard --logdir {sweep_dir})")
    try:
        outcome = run_sweep(cells, sweep_dir, address=address, gpus_per_trial=gpus_per_trial,
                            max_concurrent=max_concurrent)
    except ClusterError as error:
        raise click.ClickException(str(error)) from error
    except KeyboardInterrupt:
        click.echo(f"interrupted; run the same command again to continue the sweep in {sweep_dir}", err=True)
        raise SystemExit(130)
    click.echo(f"{len(outcome.finished)} cells finished, {len(outcome.skipped)} finished earlier, "
               f"{len(outcome.failed)} failed")
    if outcome.report is not None:
        click.echo(outcome.report.read_text())
        click.echo(f"tables: {outcome.report} and {outcome.report.with_suffix('.png')}")
    if outcome.failed:
        failures = "\n".join(f"  {name}: {message}" for name, message in outcome.failed.items())
        raise click.ClickException(f"failed cells (their sweep.log says more; run the same command again "
                                   f"to retry them):\n{failures}")
