"""The CP-VAE clustering ablation of docs/clustering.md: every variant config, one run each per seed.

    python benchmarks/clustering_ablation.py --out ~/runs/clustering --seeds 0 --data-root ../shared/datasets
    python benchmarks/clustering_ablation.py --out ~/runs/clustering --report-only
    python benchmarks/clustering_ablation.py --progress ~/runs/full/cpvae-mnist-s*
    python benchmarks/clustering_ablation.py --progress ~/runs/full/cpvae-mnist-s* --test --data-root ../shared/datasets

Each variant is a config file (default: configs/clustering/*.yaml); a cell is
``cl-replay pretrain --config VARIANT.yaml --seed S --out OUT/VARIANT-sS``. Finished cells
(``metrics.json`` present) are skipped and interrupted ones continue with ``--resume``, so the
command can be run again until everything is done. ``--jobs`` cells run side by side, one torch
thread each. The report (markdown on stdout and ``OUT/ablation.md``, validation clustering curves in
``OUT/ablation_curves.png``) lists per variant: the epochs run, Hungarian cluster accuracy of
argmax q(c|x) on the test set, categories in use (q(c_k) > 0.001) and the test negative ELBO, as
mean ± std over the finished seeds, and the cost of one training step relative to the paper's
Gumbel-softmax variant, measured in this process (one thread, batch 100, MNIST-sized model), since
wall times of runs that shared a machine do not compare. ``--progress RUN_DIR ...`` prints, for
pretraining runs still in progress (or finished), the latest epoch's validation figures from their
TensorBoard events; with ``--test``, also the test figures of each run's best checkpoint so far
(``checkpoints/best.pt``, read only: the run goes on undisturbed): the single-sample negative ELBO in
evaluation mode, the cluster accuracy of argmax q(c|x) and each category's commonest labels; the
NLL is left to the run's own end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_cell(config: Path, seed: int, out: Path, data_root: str | None) -> str:
    """Run (or continue) one variant with one seed; returns a one-line status."""
    run_dir = out / f"{config.stem}-s{seed}"
    if (run_dir / "metrics.json").is_file():
        return f"{run_dir.name}: done before"
    command = ["cl-replay", "pretrain"]
    if (run_dir / "checkpoints" / "last.pt").is_file():
        command += ["--resume", str(run_dir)]
    else:
        command += ["--config", str(config), "--seed", str(seed), "--out", str(run_dir)]
    if data_root:
        command += ["--data-root", data_root]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(out / f"{run_dir.name}.log", "a") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return f"{run_dir.name}: {'finished' if code == 0 else f'failed (exit {code}, see {log.name})'}"


def summary(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def progress(run_dirs: list[Path]) -> str:
    """Latest validation figures of each run folder, from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = ["| run | epochs so far | beta | validation cluster accuracy | categories in use "
            "| validation neg. ELBO (beta = 1) | status |", "|---|---|---|---|---|---|---|"]
    for run_dir in run_dirs:
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        events.Reload()
        tags = ("val/cluster_accuracy", "val/categories_in_use", "val/neg_elbo", "train/beta")
        if not set(tags) <= set(events.Tags()["scalars"]):
            rows.append(f"| {run_dir.name} | 0 | | | | | first epoch running |")
            continue
        last = {tag: events.Scalars(tag)[-1] for tag in tags}
        status = "finished" if (run_dir / "metrics.json").is_file() else "in progress"
        rows.append(f"| {run_dir.name} | {last['val/neg_elbo'].step} | {last['train/beta'].value:.2f} "
                    f"| {100 * last['val/cluster_accuracy'].value:.1f}% | {int(last['val/categories_in_use'].value)} "
                    f"| {last['val/neg_elbo'].value:.2f} | {status} |")
    return "\n".join(rows)


def interim_test(run_dirs: list[Path], data_root: str | None) -> str:
    """Test negative ELBO and cluster accuracy of every run's best checkpoint so far, and what each
    category of argmax q(c|x) holds: its test images and the shares of its three commonest labels."""
    import numpy as np
    import torch

    from cl_replay import evaluation
    from cl_replay.config import build_configs, read_yaml
    from cl_replay.data import load_dataset
    from cl_replay.models import build_model
    from cl_replay.settings import ModelConfig, TrainConfig
    from cl_replay.trainer import load_checkpoint

    rows = ["| run | best epoch so far | test neg. ELBO | test cluster accuracy |", "|---|---:|---:|---:|"]
    composition = ["| run | category | test images | commonest labels (share of the category's images) |",
                   "|---|---:|---:|---|"]
    splits: dict[str, object] = {}
    for run_dir in run_dirs:
        model_config, train_config = build_configs(read_yaml(run_dir / "config.yaml"), ModelConfig, TrainConfig,
                                                   source=str(run_dir / "config.yaml"))
        if train_config.dataset not in splits:
            splits[train_config.dataset] = load_dataset(train_config.dataset, data_root or train_config.data_root or None)
        test = splits[train_config.dataset].test
        checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt", torch.device("cpu"))
        model = build_model(model_config)
        model.load_state_dict(checkpoint["model"])
        torch.manual_seed(train_config.seed)
        neg_elbo = evaluation.elbo_terms(model, test.x)["neg_elbo"]
        clusters = model.eval().categorize(test.x)
        accuracy = "–"
        if clusters is not None:
            categories, labels = clusters.numpy(), test.y.numpy()
            accuracy = f"{100 * evaluation.cluster_accuracy(categories, labels)[0]:.1f}%"
            for k in np.unique(categories):
                counts = np.bincount(labels[categories == k])
                commonest = np.argsort(-counts)[:3]
                shares = ", ".join(f"{label}: {100 * counts[label] / counts.sum():.0f}%" for label in commonest
                                   if counts[label] > 0)
                composition.append(f"| {run_dir.name} | {k} | {counts.sum()} | {shares} |")
        rows.append(f"| {run_dir.name} | {checkpoint['best_epoch']} | {neg_elbo:.2f} | {accuracy} |")
    return "\n".join(rows + [""] + composition)


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, validation cluster accuracy) from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if "val/cluster_accuracy" not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in events.Scalars("val/cluster_accuracy")]


def report(configs: list[Path], seeds: list[int], out: Path) -> str:
    rows = [
        "| variant | changed keys | epochs | seeds | cluster accuracy (%) | categories in use | test neg. ELBO | step cost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    costs = step_costs(configs)
    curves, pending = {}, []
    for config in configs:
        keys = yaml.safe_load(config.read_text())
        runs = [out / f"{config.stem}-s{s}" for s in seeds if (out / f"{config.stem}-s{s}" / "metrics.json").is_file()]
        metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
        if not metrics:
            pending.append(config.stem)
            continue
        changed = ", ".join(f"{k}={v}" for k, v in keys.items() if k in VARIANT_KEYS) or "paper defaults"
        epochs = sorted({m["epochs_trained"] for m in metrics})
        rows.append(
            f"| {config.stem} | {changed} | {'/'.join(map(str, epochs))} "
            f"| {len(metrics)} | {summary([m['cluster_accuracy'] for m in metrics], 100)} "
            f"| {summary([m['categories_in_use'] for m in metrics])} "
            f"| {summary([m['test_neg_elbo'] for m in metrics], digits=2)} "
            f"| {costs[config.stem]:.1f}x |"
        )
        if runs:
            curves[config.stem] = validation_curve(runs[0])
    plot_curves(curves, out / "ablation_curves.png")
    if pending:
        waiting = ", ".join(f"{name} (step cost {costs[name]:.1f}x)" for name in pending)
        rows.append(f"\nNot finished yet (run the same command again to go on): {waiting}.")
    table = "\n".join(rows)
    (out / "ablation.md").write_text(table + "\n")
    return table


def step_costs(configs: list[Path], steps: int = 20, rounds: int = 3) -> dict[str, float]:
    """Milliseconds per training step (forward, backward, Adam) of each variant's model on one
    thread, in the epoch after the restart of the categories, relative to the ``gumbel`` variant (the paper's estimator): the fastest of ``rounds``
    interleaved timings of ``steps`` steps each, which is robust to other work on the machine."""
    import time

    import torch

    from cl_replay.config import build_configs
    from cl_replay.models import build_model
    from cl_replay.settings import ModelConfig, TrainConfig

    torch.set_num_threads(1)
    x = torch.rand(100, 784, generator=torch.Generator().manual_seed(0)).bernoulli()
    trainees = {}
    for config in configs:
        model_config = build_configs(yaml.safe_load(config.read_text()), ModelConfig, TrainConfig)[0]
        model = build_model(model_config)
        model.start_epoch(model_config.prior_init_epoch)  # the first epoch after a restart: an anchor's pass counts
        trainees[config.stem] = (model, torch.optim.Adam(model.parameters(), lr=5e-4))
    milliseconds = {name: float("inf") for name in trainees}
    for _ in range(rounds):
        for name, (model, optimizer) in trainees.items():
            for step in range(steps + 3):
                if step == 3:
                    started = time.perf_counter()
                loss, _ = model.loss(x, beta=0.5)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            milliseconds[name] = min(milliseconds[name], 1000 * (time.perf_counter() - started) / steps)
    reference = milliseconds.get("gumbel", min(milliseconds.values()))
    return {name: value / reference for name, value in milliseconds.items()}


VARIANT_KEYS = (
    "category_estimator", "decoder_sees_category", "posterior_sees_category", "temperature_schedule",
    "prior_init", "prior_init_epoch", "category_anchor_weight", "category_anchor_until",
    "category_balance_weight", "category_balance_epochs",
)


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for name, curve in curves.items():
        if curve:
            epochs, accuracy = zip(*curve)
            axes.plot(epochs, [100 * a for a in accuracy], label=name)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation cluster accuracy (%)")
    axes.set_title("CP-VAE on MNIST, K = 10 (first seed of each variant)")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="Folder for the run folders and the report.")
    parser.add_argument("--progress", type=Path, nargs="+", help="Only print the progress of these run folders.")
    parser.add_argument("--configs", type=Path, nargs="*", help="Variant configs (default: configs/clustering/*.yaml).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=2, help="Cells run side by side (default 2).")
    parser.add_argument("--data-root")
    parser.add_argument("--report-only", action="store_true", help="Only write the report of finished cells.")
    parser.add_argument("--test", action="store_true", help="With --progress: test figures of the best checkpoints so far.")
    args = parser.parse_args()
    if args.progress:
        print(progress(args.progress))
        if args.test:
            print("\n" + interim_test(args.progress, args.data_root))
        return
    if args.out is None:
        parser.error("--out is required (or --progress RUN_DIR ...)")
    configs = args.configs or sorted((ROOT / "configs" / "clustering").glob("*.yaml"))
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        cells = [(config, seed) for seed in args.seeds for config in configs]
        with ThreadPoolExecutor(args.jobs) as pool:
            for status in pool.map(lambda cell: run_cell(*cell, args.out, args.data_root), cells):
                print(status, flush=True)
    print(report(configs, args.seeds, args.out))


if __name__ == "__main__":
    sys.exit(main())
