"""Markdown summary of continual-learning runs (folders holding ``results.json``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from cl_replay.compare import mean_std
from cl_replay.config import as_flat_dict
from cl_replay.settings import ModelConfig

from .config import CLConfig

__all__ = ["load_cl_results", "summarize_cl_runs", "variant_labels"]


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


# Config keys that say where and how a run was executed, not what it computed.
RUN_ONLY_KEYS = frozenset({"seed", "out", "data_root", "device", "threads", "progress", "download", "on_nan"})


def variant_labels(results: list[dict]) -> list[str]:
    """For each run, the config values that set it apart from the other runs of its stream,
    generator and scenario (``key=value, ...``; empty when they all share one config)."""
    defaults = as_flat_dict(CLConfig(), ModelConfig())  # keys a run's code did not have yet took these values
    configs = [{k: v for k, v in (defaults | r.get("config", {})).items() if k not in RUN_ONLY_KEYS} for r in results]
    labels = []
    for result, config in zip(results, configs):
        same = [c for r, c in zip(results, configs) if _group_key(r) == _group_key(result)]
        differing = sorted(k for k in set().union(*same) if len({repr(c.get(k)) for c in same}) > 1)
        labels.append(", ".join(f"{k}={config.get(k)}" for k in differing))
    return labels


def _group_key(result: dict) -> tuple[str, str, str]:
    return result.get("stream", "?"), result.get("generator", "?"), result.get("scenario", "class")


def summarize_cl_runs(run_dirs: Iterable[str | Path]) -> str:
    """A markdown table: final average accuracy mean ± std (sample std over seeds, in %), the
    accuracy of every seed, mean forgetting and mean wall time, one row per stream, generator,
    scenario and variant (``variant_labels``: the config values that differ between runs of the
    same generator, e.g. an ablation), rows sorted by stream, scenario, accuracy."""
    results = load_cl_results(run_dirs)
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for result, variant in zip(results, variant_labels(results)):
        groups.setdefault(_group_key(result) + (variant,), []).append(result)
    rows = []
    for (stream, generator, scenario, variant), members in groups.items():
        accuracy, spread = mean_std([100.0 * r["final_average_accuracy"] for r in members])
        forgetting = [r["average_forgetting"] for r in members if r.get("average_forgetting") is not None]
        wall = [r["wall_time_s"] for r in members if r.get("wall_time_s") is not None]
        by_seed = sorted(members, key=lambda r: (r.get("seed") is None, r.get("seed")))
        per_seed = ", ".join(f"{r.get('seed')}: {100.0 * r['final_average_accuracy']:.2f}" for r in by_seed)
        rows.append((stream, scenario, -accuracy, [
            stream, generator + (f" ({variant})" if variant else ""), scenario, f"{len(members)}",
            f"{accuracy:.2f}" + (f" ± {spread:.2f}" if spread is not None else ""), per_seed,
            f"{100.0 * sum(forgetting) / len(forgetting):.2f}" if forgetting else "–",
            f"{sum(wall) / len(wall):.0f}" if wall else "–",
        ]))
    rows.sort(key=lambda r: r[:3])
    header = ["stream", "generator", "scenario", "runs", "final avg. accuracy (%)", "per seed (seed: %)",
              "avg. forgetting (%)", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 2 + ["---"] + ["---:"] * 2) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for *_, cells in rows]
    return "\n".join(lines)
