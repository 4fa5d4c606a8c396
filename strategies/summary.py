"""Markdown summary of continual-learning runs (folders holding ``results.json``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from cl_replay.compare import mean_std

__all__ = ["load_cl_results", "summarize_cl_runs"]


def load_cl_results(run_dirs: Iterable[str | Path]) -> list[dict]:
    """The ``results.json`` of every run folder (a path to the file itself is accepted too)."""
    results = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        path = path if path.name == "results.json" else path / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"no results.json in {path.parent}")
        data = json.loads(path.read_text())
        data.setdefault("_path", str(path.parent))
        results.append(data)
    return results


def summarize_cl_runs(run_dirs: Iterable[str | Path]) -> str:
    """A markdown table: final average accuracy mean ± std (sample std over seeds, in %) and mean
    wall time, one row per (stream, generator, scenario), rows sorted by stream, scenario, accuracy."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for result in load_cl_results(run_dirs):
        key = (result.get("stream", "?"), result.get("generator", "?"), result.get("scenario", "class"))
        groups.setdefault(key, []).append(result)
    rows = []
    for (stream, generator, scenario), results in groups.items():
        accuracy, spread = mean_std([100.0 * r["final_average_accuracy"] for r in results])
        forgetting = [r["average_forgetting"] for r in results if r.get("average_forgetting") is not None]
        wall = [r["wall_time_s"] for r in results if r.get("wall_time_s") is not None]
        seeds = sorted({r.get("seed") for r in results}, key=lambda s: (s is None, s))
        rows.append((stream, scenario, -accuracy, [
            stream, generator, scenario, ", ".join(str(s) for s in seeds) + f" (n={len(results)})",
            f"{accuracy:.2f}" + (f" ± {spread:.2f}" if spread is not None else ""),
            f"{100.0 * sum(forgetting) / len(forgetting):.2f}" if forgetting else "–",
            f"{sum(wall) / len(wall):.0f}" if wall else "–",
        ]))
    rows.sort(key=lambda r: r[:3])
    header = ["stream", "generator", "scenario", "seeds", "final avg. accuracy (%)", "avg. forgetting (%)", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---"] + ["---:"] * 3) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for *_, cells in rows]
    return "\n".join(lines)
