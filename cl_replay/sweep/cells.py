"""One cell in its folder: the record, what a restart does with it, and the trial that runs it.

``<cell folder>/sweep_cell.json`` (the record): ``cell`` (its name), ``values`` (what its axes
set), ``config_hash`` and ``config`` (see ``spec``), ``status`` (``pending``, ``running``,
``done`` or ``failed``), ``attempts``, ``error`` (the failure's message) and ``seconds`` (of the
last attempt). The sweep sets ``pending`` when it queues the cell, the trial ``running`` when it
starts and ``done`` or ``failed`` when it ends; a trial that is killed leaves ``running``.
Everything a trial prints goes to ``<cell folder>/sweep.log``; the usual run folder (config.yaml,
checkpoints, metrics.json or results.json, TensorBoard events) sits beside it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from enum import Enum
from pathlib import Path
from typing import Any

from .spec import Cell

RECORD = "sweep_cell.json"
LOG = "sweep.log"
RESULT_FILE = {"pretrain": "metrics.json", "run": "results.json"}


class CellState(Enum):
    """What a sweep does with a cell whose folder it finds (or not)."""

    NEW = "new"            # no folder yet: run it
    DONE = "done"          # finished with the same config: skip it
    RESUME = "resume"      # started with the same config, not finished: go on from what it saved
    CONFLICT = "conflict"  # the folder holds another config, or files without a record: refuse


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The cell record in ``run_dir``, or None when there is none."""
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Write the record whole (through a temporary file, so a reader never sees half of it)."""
    path = Path(run_dir) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(record, indent=1, default=str))
    path.with_suffix(".tmp").replace(path)


def new_record(cell: Cell) -> dict[str, Any]:
    return {"cell": cell.name, "values": cell.values, "config_hash": cell.config_hash, "config": cell.config,
            "status": "pending", "attempts": 0, "error": None, "seconds": None}


def cell_state(cell: Cell, run_dir: Path) -> tuple[CellState, str]:
    """The state of ``cell`` given its folder, and for a conflict the reason."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return CellState.NEW, ""
    record = read_record(run_dir)
    if record is None:
        return CellState.CONFLICT, f"{run_dir} holds files but no {RECORD}: not a cell of a sweep"
    if record.get("config_hash") != cell.config_hash:
        differences = config_differences(record.get("config") or {}, cell)
        if differences:
            return CellState.CONFLICT, f"{run_dir} was run with another config ({'; '.join(differences)})"
    if record.get("status") == "done" and (run_dir / RESULT_FILE[cell.command]).is_file():
        return CellState.DONE, ""
    return CellState.RESUME, ""


def config_differences(recorded: dict[str, Any], cell: Cell) -> list[str]:
    """The keys whose value differs between a folder's recorded config and the cell's. A key the
    record lacks (the code gained it since) counts only when the cell's value is not the key's
    default; keys the code no longer has are ignored."""
    from .spec import UNHASHED, config_types

    defaults = {f.name: f.default for t in config_types(cell.command) for f in dataclasses.fields(t)}
    return [f"{key}: {recorded.get(key, '(none)')!r} there, {value!r} now"
            for key, value in cell.config.items()
            if key not in UNHASHED and recorded.get(key, defaults.get(key)) != value]


def run_cell(cell: Cell, run_dir: Path) -> dict[str, Any]:
    """Run ``cell`` in ``run_dir`` and return its final record.

    An earlier attempt's work goes on: ``pretrain`` from ``checkpoints/last.pt`` (the trainer's
    resume), ``run`` after the last finished experience (``resume.pt``). An exception becomes a ``failed`` record holding its
    message; an interruption (KeyboardInterrupt, a killed process) leaves ``running``.
    """
    run_dir = Path(run_dir)
    record = read_record(run_dir) or new_record(cell)
    record.update(status="running", attempts=record["attempts"] + 1, error=None, seconds=None)
    write_record(run_dir, record)
    started = time.perf_counter()
    with open(run_dir / LOG, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"--- attempt {record['attempts']} of cell {cell.name}, {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
        try:
            (_pretrain if cell.command == "pretrain" else _continual_learning)(cell, run_dir)
            record.update(status="done")
        except Exception as error:  # the trial reports any failure as the cell's message
            record.update(status="failed", error=f"{type(error).__name__}: {error}")
            print(record["error"], flush=True)
    record["seconds"] = time.perf_counter() - started
    write_record(run_dir, record)
    return record


def _pretrain(cell: Cell, run_dir: Path) -> None:
    import torch

    from cl_replay.trainer import pretrain

    torch.set_num_threads(1)
    model_config, train_config = (dataclasses.replace(config) for config in cell.configs)
    pretrain(model_config, train_config, run_dir, resume=(run_dir / "checkpoints" / "last.pt").is_file())


def _continual_learning(cell: Cell, run_dir: Path) -> None:
    from strategies.config import RESUME_STATE
    from strategies.run import run_experiment

    cl, model_config = cell.configs
    run_experiment(cl, model_config, run_dir=run_dir, echo=print, resume=(run_dir / RESUME_STATE).is_file())
