"""Run a sweep's cells as Ray tasks, one task per cell, and show their progress.

Without an address (``--address`` or ``$RAY_ADDRESS``) a local Ray instance starts with every
core; with one the sweep joins that cluster, whose nodes must have the project installed and see
the sweep folder (and the data root) at the same paths. A trial takes :meth:`Cell.cpus` CPUs
(one torch thread) and ``gpus_per_trial`` GPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .cells import CellState, cell_state, new_record, read_record, run_cell, write_record
from .report import write_report
from .spec import Cell

# A trial's own progress bars go to its sweep.log; one line a minute is enough there.
TRIAL_ENV = {"TQDM_MININTERVAL": "60"}


@dataclass
class SweepOutcome:
    """Cells skipped (finished earlier), finished now and failed now (name -> message), and the report."""

    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    report: Path | None = None


def plan(cells: list[Cell], sweep_dir: Path) -> dict[str, tuple[CellState, str]]:
    """Each cell's state in ``sweep_dir`` (see ``cells.cell_state``)."""
    return {cell.name: cell_state(cell, Path(sweep_dir) / cell.name) for cell in cells}


class ClusterError(RuntimeError):
    """The Ray cluster named by ``--address`` or ``$RAY_ADDRESS`` cannot be joined."""


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (else ``$RAY_ADDRESS``), or start a local instance on
    ``num_cpus`` cores (default every core); nothing when Ray is already initialised. Returns
    whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # Ray starts its workers 15 nice levels below the driver; the trials are the sweep's work,
        # so on a shared machine they keep the priority of the command that started them.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        return True
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(
            f"cannot join the Ray cluster at {address}: {error}. Is it running (ray status)? A cluster "
            "with token authentication also needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or "
            "~/.ray/auth_token) in this environment."
        ) from error
    return True


def run_sweep(cells: list[Cell], sweep_dir: Path, *, address: str | None = None, gpus_per_trial: float = 0.0,
              max_concurrent: int | None = None) -> SweepOutcome:
    """Run every cell that is not finished, then write the report of all finished cells.

    The caller checks :func:`plan` for conflicts first; cells found ``done`` are skipped.
    """
    import ray

    sweep_dir = Path(sweep_dir)
    states = plan(cells, sweep_dir)
    outcome = SweepOutcome(skipped=[c.name for c in cells if states[c.name][0] is CellState.DONE])
    todo = [cell for cell in cells if states[cell.name][0] in (CellState.NEW, CellState.RESUME)]
    started_ray = start_ray(address) if todo else False
    for cell in todo:  # queued until its trial starts, whatever an earlier attempt left
        write_record(sweep_dir / cell.name, (read_record(sweep_dir / cell.name) or new_record(cell)) | {"status": "pending"})
    trial = ray.remote(run_cell)
    in_flight: dict[ray.ObjectRef, Cell] = {}
    bar = tqdm(total=len(cells), initial=len(outcome.skipped), desc="cells", unit="cell", dynamic_ncols=True)
    try:
        while todo or in_flight:
            while todo and len(in_flight) < (max_concurrent or len(cells)):
                cell = todo.pop(0)
                options = dict(num_cpus=cell.cpus(gpus_per_trial), num_gpus=gpus_per_trial, name=cell.name,
                               runtime_env={"env_vars": TRIAL_ENV})
                in_flight[trial.options(**options).remote(cell, (sweep_dir / cell.name).resolve())] = cell
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                cell = in_flight.pop(ref)
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayError as error:  # the trial's process died
                    record = {"status": "failed", "error": str(error).strip().splitlines()[0]}
                if record["status"] == "done":
                    outcome.finished.append(cell.name)
                    bar.write(f"done    {cell.name} ({record['seconds']:.0f} s)")
                else:
                    outcome.failed[cell.name] = record["error"]
                    bar.write(f"FAILED  {cell.name}: {record['error'].splitlines()[0]}")
                bar.update(1)
            running = sum((read_record(sweep_dir / c.name) or {}).get("status") == "running" for c in in_flight.values())
            bar.set_postfix(done=len(outcome.skipped) + len(outcome.finished), running=running,
                            queued=len(todo) + len(in_flight) - running, failed=len(outcome.failed), refresh=False)
    except KeyboardInterrupt:
        for ref in in_flight:
            ray.cancel(ref)
        raise
    finally:
        bar.close()
        if started_ray:
            ray.shutdown()
    finished = [sweep_dir / c.name for c in cells if (read_record(sweep_dir / c.name) or {}).get("status") == "done"]
    if finished:
        outcome.report = write_report(cells[0].command, finished, sweep_dir)
    return outcome
