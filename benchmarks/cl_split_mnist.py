"""Split MNIST (class-incremental by default) for a list of generators and seeds.

    python benchmarks/cl_split_mnist.py --generators cpvae,vae,none --seeds 0,1 \
        --data-root ../shared/datasets --out benchmarks/out/split_mnist

Each run uses the protocol defaults of ``configs/cl/split_mnist.yaml`` (2000 iterations per
experience, batch 128 + 128 replayed, Adam 1e-3) unless overridden with ``--iterations`` or
``--set KEY=VALUE``. Prints a table (final average accuracy, forgetting, wall time and the
classifier / generator milliseconds per iteration of every run), then the mean ± std summary,
and writes ``benchmark.json`` (every run's results) and ``summary.md`` to the output folder; each
run keeps its own run folder ``<out>/<generator>-seed<seed>``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strategies.cli import _parse_set  # noqa: E402
from strategies.run import load_config, run_experiment  # noqa: E402
from strategies.summary import summarize_cl_runs  # noqa: E402


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", default="cpvae,vae,none", help="comma-separated generator names")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (seed 0: standard class order)")
    parser.add_argument("--scenario", default="class", choices=["class", "task"])
    parser.add_argument("--iterations", type=int, default=None, help="iterations per experience (default 2000)")
    parser.add_argument("--data-root", default=None, help="folder with MNIST/raw (else $CL_REPLAY_DATA)")
    parser.add_argument("--config", default=None, help="YAML config (default configs/cl/split_mnist.yaml)")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/out/cl_split_mnist-<timestamp>)")
    parser.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config key (repeatable)")
    parser.add_argument("--progress", action="store_true", help="show each run's tqdm bar")
    args = parser.parse_args(argv)

    out = Path(args.out or f"benchmarks/out/cl_split_mnist-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    generators = [g for g in args.generators.split(",") if g]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    extra = _parse_set(tuple(args.set_values))
    runs, run_dirs = [], []
    for generator in generators:
        for seed in seeds:
            overrides = dict(extra, generator=generator, seed=seed, scenario=args.scenario, iterations=args.iterations,
                             data_root=args.data_root, progress=args.progress)
            cl, model = load_config("split_mnist", args.config, overrides)
            run_dir = out / f"{generator}-seed{seed}"
            results = run_experiment(cl, model, run_dir=run_dir, echo=print)
            timing = results["timing"]
            runs.append({
                "generator": generator,
                "seed": seed,
                "final_average_accuracy": results["final_average_accuracy"],
                "average_forgetting": results["average_forgetting"],
                "wall_time_s": results["wall_time_s"],
                "classifier_ms_per_iteration": _mean([t.get("classifier_ms_per_iteration") for t in timing]),
                "generator_ms_per_iteration": _mean([t.get("generator_ms_per_iteration") for t in timing]),
                "accuracy_matrix": results["accuracy_matrix"],
                "run_dir": str(run_dir),
            })
            run_dirs.append(run_dir)
            (out / "benchmark.json").write_text(json.dumps({"scenario": args.scenario, "runs": runs}, indent=1))

    header = f"{'generator':<10} {'seed':>4} {'final avg acc':>13} {'forgetting':>10} {'wall s':>7} {'clf ms/it':>9} {'gen ms/it':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in runs:
        forgetting = r["average_forgetting"]
        print(f"{r['generator']:<10} {r['seed']:>4} {100 * r['final_average_accuracy']:>12.2f}% "
              f"{'' if forgetting is None else f'{100 * forgetting:.2f}%':>10} {r['wall_time_s']:>7.0f} "
              f"{r['classifier_ms_per_iteration']:>9.1f} {r['generator_ms_per_iteration']:>9.1f}")
    summary = summarize_cl_runs(run_dirs)
    print("\n" + summary)
    (out / "summary.md").write_text(summary + "\n")
    print(f"\nresults: {out / 'benchmark.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
