"""Compare pre-training runs: a Table-1-style markdown table and a side-by-side figure of samples.

A run folder holds ``config.yaml`` (flat keys, among them ``model``, ``dataset``, ``categories``,
``epochs``), ``metrics.json`` (``test_neg_elbo``, ``test_nll``, ``epochs_trained``, optionally
``cluster_accuracy``) and ``samples.png``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.image
from matplotlib.figure import Figure

from .config import read_yaml

# Models whose size is set by K = ``categories`` (CP-VAE categories, mixture components,
# pseudo-inputs); the others have one result per dataset.
MODELS_WITH_K = ("cpvae", "mog", "vampprior", "hvp")
# Row order of the table: the paper's order, then the models the paper does not have.
MODEL_ORDER = ("cpvae", "cp1", "vae", "mog", "vampprior", "hvae", "hvp", "flowprior")

# Table 1 of Lavda, Gregorova & Kalousis (ECAI 2020): test negative ELBO, keyed by
# (model, dataset, K), K None for the models without K.
PAPER_TABLE1: dict[tuple[str, str, int | None], float] = {
    ("cpvae", "mnist", 10): 84.76, ("cpvae", "mnist", 150): 86.84, ("cpvae", "mnist", 500): 88.63,
    ("vae", "mnist", None): 88.75,
    ("mog", "mnist", 10): 89.43, ("mog", "mnist", 150): 88.96, ("mog", "mnist", 500): 88.85,
    ("vampprior", "mnist", 10): 87.94, ("vampprior", "mnist", 150): 86.55, ("vampprior", "mnist", 500): 86.07,
    ("hvae", "mnist", None): 86.7,
    ("hvp", "mnist", 10): 85.90, ("hvp", "mnist", 150): 85.09, ("hvp", "mnist", 500): 85.01,
    ("cpvae", "omniglot", 50): 114.31, ("cpvae", "omniglot", 500): 114.14,
    ("vae", "omniglot", None): 115.06,
    ("mog", "omniglot", 50): 116.31, ("mog", "omniglot", 500): 116.12,
    ("vampprior", "omniglot", 50): 114.01, ("vampprior", "omniglot", 500): 113.74,
    ("hvae", "omniglot", None): 110.81,
    ("hvp", "omniglot", 50): 110.50, ("hvp", "omniglot", 500): 110.16,
}


@dataclass
class Run:
    """One run folder: its model, dataset, K (None for models without K) and test metrics."""

    path: Path
    model: str
    dataset: str
    k: int | None
    metrics: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Run:
        config = read_yaml(path / "config.yaml")
        metrics = json.loads((path / "metrics.json").read_text())
        model = str(config["model"])
        k = int(config["categories"]) if model in MODELS_WITH_K else None
        return cls(Path(path), model, str(config["dataset"]), k, metrics)

    @property
    def label(self) -> str:
        return f"{self.model} {self.dataset}" + (f" K={self.k}" if self.k is not None else "")

    def cell(self) -> str:
        """``neg_elbo / nll`` to two decimals."""
        return metrics_cell([self])


def _number(value: Any) -> str:
    return "—" if value is None else f"{float(value):.2f}"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation sqrt(sum_i (v_i - mean)^2 / (n - 1)) (None for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def metrics_cell(runs: list[Run]) -> str:
    """``neg_elbo / nll`` of one run, or of several (seeds) ``mean ± std / mean ± std (n=N)``."""
    parts = []
    for key in ("test_neg_elbo", "test_nll"):
        values = [float(run.metrics[key]) for run in runs if run.metrics.get(key) is not None]
        mean, std = mean_std(values) if values else (None, None)
        parts.append(_number(mean) + ("" if std is None else f" ± {std:.2f}"))
    return " / ".join(parts) + (f" (n={len(runs)})" if len(runs) > 1 else "")


def _columns(runs: list[Run], paper: bool) -> list[tuple[str, int | None]]:
    """(dataset, K) columns: each dataset's K values (from our runs, and the paper's if ``paper``)
    in increasing order, or a single (dataset, None) column when no run of the dataset has a K."""
    columns = []
    for dataset in sorted({run.dataset for run in runs}):
        ks = {run.k for run in runs if run.dataset == dataset and run.k is not None}
        if paper:
            ks |= {k for (_, d, k) in PAPER_TABLE1 if d == dataset and k is not None}
        columns += [(dataset, k) for k in sorted(ks)] or [(dataset, None)]
    return columns


def _column_of(dataset: str, k: int | None, columns: list[tuple[str, int | None]]) -> tuple[str, int | None]:
    """A result's column: its own (dataset, K), or for models without K the dataset's first column
    (as the paper's Table 1 places VAE and HVAE)."""
    return (dataset, k) if k is not None else next(c for c in columns if c[0] == dataset)


def results_table(runs: list[Run], paper: bool = False) -> str:
    """Markdown table: rows = models, columns = ``<dataset> K=<k>``, cells ``neg ELBO / NLL``
    (mean ± std over the runs of a cell, e.g. seeds), with the paper's negative ELBO in brackets
    when ``paper`` is true."""
    columns = _columns(runs, paper)
    models = sorted({run.model for run in runs}, key=lambda m: (MODEL_ORDER + (m,)).index(m))
    grouped: dict[tuple[str, tuple[str, int | None]], list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.model, _column_of(run.dataset, run.k, columns)), []).append(run)
    cells = {key: [metrics_cell(group)] for key, group in grouped.items()}
    datasets = {c[0] for c in columns}
    if paper:
        for (model, dataset, k), value in PAPER_TABLE1.items():
            if model in models and dataset in datasets:
                key = (model, _column_of(dataset, k, columns))
                cells[key] = cells.get(key, ["—"]) + [f"[paper {value:.2f}]"]

    header = ["model"] + [dataset if k is None else f"{dataset} K={k}" for dataset, k in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        row = [model] + [" ".join(cells.get((model, column), ["—"])) for column in columns]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def runs_table(runs: list[Run]) -> str:
    """Markdown table with one row per run: folder, epochs trained and the clustering accuracy."""
    lines = ["| run | model | dataset | K | epochs trained | neg ELBO / NLL | cluster accuracy |", "|" + "---|" * 7]
    for run in runs:
        k = "—" if run.k is None else str(run.k)
        epochs = run.metrics.get("epochs_trained", "—")
        accuracy = _number(run.metrics.get("cluster_accuracy"))
        lines.append(f"| {run.path.name} | {run.model} | {run.dataset} | {k} | {epochs} | {run.cell()} | {accuracy} |")
    return "\n".join(lines)


def save_sample_grids(runs: list[Run], out_png: Path) -> None:
    """The runs' ``samples.png`` side by side, each titled with its model, dataset, K and neg ELBO."""
    figure = Figure(figsize=(3.2 * len(runs), 3.6))
    for i, run in enumerate(runs):
        axes = figure.add_subplot(1, len(runs), i + 1)
        samples = run.path / "samples.png"
        if samples.is_file():
            axes.imshow(matplotlib.image.imread(samples), cmap="gray")
        axes.set_title(f"{run.label}\nneg ELBO {_number(run.metrics.get('test_neg_elbo'))}", fontsize=9)
        axes.axis("off")
    figure.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=150)


def compare_pretrain_runs(run_dirs: list[Path], out_png: Path | None = None, paper: bool = False) -> str:
    """Markdown comparison of pre-training runs (a results table like the paper's Table 1, then one
    row per run); writes the runs' sample grids side by side to ``out_png`` if given."""
    if not run_dirs:
        raise ValueError("no run folders to compare")
    runs = [Run.load(Path(path)) for path in run_dirs]
    if out_png is not None:
        save_sample_grids(runs, Path(out_png))
    note = "Cells: test negative ELBO / test NLL (nats)"
    if paper:
        note += "; [paper X]: the CP-VAE paper's Table 1 negative ELBO"
    note += ". Models without K are in their dataset's first column."
    return "\n\n".join([results_table(runs, paper), note, runs_table(runs)])
