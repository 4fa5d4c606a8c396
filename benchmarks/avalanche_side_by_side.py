"""Generative replay in Avalanche, side by side, on class-incremental split MNIST.

    python benchmarks/avalanche_side_by_side.py --data-root ../shared/datasets             # 3 seeds
    python benchmarks/avalanche_side_by_side.py --data-root ../shared/datasets --seeds 1 --epochs 1 --limit 200
    python benchmarks/avalanche_side_by_side.py --data-root ../shared/datasets --rows plugin --out plugin.json
    python benchmarks/avalanche_side_by_side.py --report avalanche.json plugin.json

With ``--out`` the results are written after every run and a second call with the same settings
skips the runs already there, so an interrupted benchmark resumes; rows can run as parallel
processes with their own ``--out`` files, and ``--report`` joins them into one table.

Settings of ContinualAI's continual-learning-baselines for ``GenerativeReplay`` on split MNIST:
classifier MLP 784-400-400-10 with ReLU, 10 epochs per experience, batch 16, Adam lr 1e-3,
100 replayed samples per batch, replay labelled by the previous classifier's arg-max. Rows:

(a) ``avalanche``: Avalanche's ``GenerativeReplay`` with its default generator (``MlpVAE``, latent
    dimension 2, Adam lr 0.01, trained by ``VAETraining`` with the same epochs and batch plus 100
    replayed samples). As in the baselines the images are normalised with MNIST's mean and std
    (0.1307, 0.3081), the space ``MlpVAE`` decodes into.
(b) ``avalanche+cpvae``: the same Avalanche loop with our CP-VAE (``configs/cl/split_mnist.yaml``:
    20 categories, gated 2x300 networks, latent 40) as the generator, wrapped by
    ``strategies.ReplayGenerator`` and trained by ``VAETraining`` (Adam lr 1e-3); after each
    experience q(c) is refitted over the experience and the previous generator's replay (without
    it, replay would keep the initial uniform q(c)). The Gumbel-softmax temperature stays at its
    start value (Avalanche's loop has no schedule for it). Pixels in [0, 1].
(c) ``plugin``: Avalanche's ``Naive`` with ``strategies.CPVAEReplayPlugin``: the same CP-VAE,
    trained after each experience as many iterations as the classifier (batch 16 + 100 replayed,
    Adam lr 1e-3, temperature schedule), replay in proportion to q(c), hard labels, losses
    weighted 1/t and 1 - 1/t. Pixels in [0, 1].

Avalanche concatenates replay to the current batch (each of the 116 samples weighs the same);
the plugin weights the two losses 1/t and 1 - 1/t. All rows share the data (the project's data
layer, official test set), the class order (seed 0: digits 0..9 in pairs; other seeds a seeded
permutation) and the classifier's initial weights for a seed. Denormal floats are flushed to zero
in every row (``torch.set_flush_denormal(True)``). Reported per row: final average accuracy (mean
over the 5 experiences of the final classifier's test accuracy) and wall time of the training.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from avalanche.benchmarks import nc_benchmark  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402
from avalanche.training.plugins import GenerativeReplayPlugin  # noqa: E402
from avalanche.training.supervised import GenerativeReplay, Naive, VAETraining  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from cl_replay.data import DatasetError  # noqa: E402
from cl_replay.models import build_model  # noqa: E402
from strategies.generators import (  # noqa: E402
    GeneratorSchedule,
    ReplayGenerator,
    elbo_criterion,
    refit_aggregated_posterior,
)
from strategies.plugin import CPVAEReplayPlugin  # noqa: E402
from strategies.replay import MLPClassifier  # noqa: E402
from strategies.run import load_config  # noqa: E402
from strategies.streams import ExperienceTensors, build_stream, extract_tensors, stream_from_tensors  # noqa: E402

ROWS = {
    "avalanche": "(a) Avalanche GenerativeReplay, default MlpVAE",
    "avalanche+cpvae": "(b) Avalanche GenerativeReplay, CP-VAE generator",
    "plugin": "(c) Naive + CPVAEReplayPlugin",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# The arguments that change a run's result; a --out file holds runs of one setting only.
SETTINGS = ("epochs", "batch", "replay", "lr", "aggregate_samples", "limit", "device")


def limited_stream(data_root: str | None, seed: int, limit: int):
    """Split MNIST (pixels in [0, 1], flat) with at most ``limit`` training examples per experience."""
    stream = build_stream("split_mnist", data_root=data_root, seed=seed)
    if not limit:
        return stream
    train = ExperienceTensors.cat([d for d in stream.train])
    keep = torch.cat([(train.y == c).nonzero().flatten()[: math.ceil(limit / 2)]
                      for group in stream.experience_classes for c in group])
    test = ExperienceTensors.cat(stream.test)
    return stream_from_tensors("split_mnist", train.x[keep], train.y[keep], test.x, test.y, stream.experience_classes)


def image_benchmark(stream):
    """The stream as an Avalanche benchmark of normalised (1, 28, 28) images (row a)."""
    def images(parts):
        x = torch.cat([d.x for d in parts]).view(-1, 1, 28, 28)
        return TensorDataset((x - MNIST_MEAN) / MNIST_STD, torch.cat([d.y for d in parts]))

    return nc_benchmark(images(stream.train), images(stream.test), n_experiences=stream.n_experiences,
                        task_labels=False, shuffle=False, fixed_class_order=stream.class_order)


class RefitQcPlugin(SupervisedPlugin):
    """For row (b): q(c) of the CP-VAE refitted after each experience of Avalanche's generator training,
    over the experience and the replay of the generator frozen before it (``refit_aggregated_posterior``)."""

    def __init__(self, generator: ReplayGenerator, samples: int) -> None:
        super().__init__()
        self.generator, self.samples = generator, samples
        self.t, self.previous = 0, None

    def before_training_exp(self, strategy, *args, **kwargs):
        self.t += 1
        self.previous = self.generator.frozen_copy() if self.t > 1 else None

    def after_training_exp(self, strategy, *args, **kwargs):
        data = extract_tensors(strategy.experience.dataset).to(strategy.device)
        refit_aggregated_posterior(self.generator, self.previous, data.x, self.t, self.samples)


def without_single_image_batches(generator_strategy) -> None:
    """Let ``GenerativeReplay``'s default generator training drop the last minibatch of the first
    experience when it would hold one image: ``MlpVAE``'s BatchNorm cannot train on a batch of one
    (it raises), and in the first experience no replay is added to the batch. Other batches and
    experiences are untouched, so a class order that never meets the case runs as before."""
    make_loader = generator_strategy.make_train_dataloader

    def make_train_dataloader(**kwargs):
        first = generator_strategy.experience.current_experience == 0
        single = len(generator_strategy.adapted_dataset) % generator_strategy.train_mb_size == 1
        return make_loader(**{**kwargs, "drop_last": first and single})

    generator_strategy.make_train_dataloader = make_train_dataloader


def classifier(seed: int, device) -> MLPClassifier:
    torch.manual_seed(seed)
    return MLPClassifier(784, 10, units=400, layers=2).to(device)


def run_row(row: str, stream, seed: int, args, device) -> dict:
    model = classifier(seed, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    common = dict(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=args.batch,
                  train_epochs=args.epochs, eval_mb_size=128, device=device, evaluator=None)
    _, model_config = load_config("split_mnist", overrides={"generator": "cpvae"})
    cpvae = build_model(replace(model_config, input_dim=784)).to(device)
    benchmark = stream.benchmark
    if row == "avalanche":
        benchmark = image_benchmark(stream)
        strategy = GenerativeReplay(replay_size=args.replay, **common)
        without_single_image_batches(strategy.generator_strategy)
    elif row == "avalanche+cpvae":
        generator = ReplayGenerator(cpvae, "cpvae")
        generator_strategy = VAETraining(
            model=generator, optimizer=torch.optim.Adam(generator.parameters(), lr=args.lr), criterion=elbo_criterion,
            train_mb_size=args.batch, train_epochs=args.epochs, device=device, evaluator=None,
            plugins=[GenerativeReplayPlugin(replay_size=args.replay), RefitQcPlugin(generator, args.aggregate_samples)],
        )
        strategy = GenerativeReplay(generator_strategy=generator_strategy, replay_size=args.replay, **common)
    else:
        iterations = args.epochs * math.ceil(len(stream.train[0]) / args.batch)
        schedule = GeneratorSchedule(iterations=iterations, batch_size=args.batch, replay_batch_size=args.replay,
                                     temperature_iterations=iterations, aggregate_samples=args.aggregate_samples)
        plugin = CPVAEReplayPlugin(cpvae, num_classes=10, schedule=schedule, lr=args.lr, replay_mb_size=args.replay,
                                   tensor_source=stream.tensors)
        strategy = Naive(plugins=[plugin], **common)
    torch.manual_seed(seed)
    start = time.perf_counter()
    for experience in benchmark.train_stream:
        strategy.train(experience)
    wall = time.perf_counter() - start
    accuracies = []
    model.eval()
    with torch.no_grad():
        for data in stream.test:
            x = data.x.to(device)
            x = (x.view(-1, 1, 28, 28) - MNIST_MEAN) / MNIST_STD if row == "avalanche" else x
            accuracies.append(float((model(x).argmax(1).cpu() == data.y.cpu()).float().mean()))
    return {"row": row, "seed": seed, "final_average_accuracy": sum(accuracies) / len(accuracies),
            "accuracy_per_experience": accuracies, "wall_time_s": wall}


def previous_runs(path: Path, settings: dict) -> list[dict]:
    """The runs recorded in ``path`` by an earlier call with the same ``settings`` (none if it is absent)."""
    if not path.exists():
        return []
    try:
        recorded = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: {path} is not a results file of this benchmark ({error}); move it away or pick "
                         "another --out") from None
    if recorded.get("settings") != settings:
        raise SystemExit(f"error: {path} holds runs with other settings ({recorded.get('settings')}); pick another "
                         "--out to run these")
    print(f"{path}: {len(recorded['runs'])} runs already done, kept")
    return recorded["runs"]


def summary(results: list[dict]) -> str:
    lines = ["| method | final average accuracy (%) | per seed (seed: %) | wall time per run (s) | seeds |",
             "|---|---:|---|---:|---:|"]
    for row, title in ROWS.items():
        runs = sorted((r for r in results if r["row"] == row), key=lambda r: r["seed"])
        if not runs:
            continue
        acc = [100 * r["final_average_accuracy"] for r in runs]
        wall = [r["wall_time_s"] for r in runs]
        spread = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
        per_seed = ", ".join(f"{r['seed']}: {a:.2f}" for r, a in zip(runs, acc))
        lines.append(f"| {title} | {statistics.mean(acc):.2f}{spread} | {per_seed} | {statistics.mean(wall):.0f} | "
                     f"{len(runs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder with MNIST/raw (else $CL_REPLAY_DATA)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per experience (default 10)")
    parser.add_argument("--batch", type=int, default=16, help="training batch (default 16)")
    parser.add_argument("--replay", type=int, default=100, help="replayed samples per batch (default 100)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the classifier (default 1e-3)")
    parser.add_argument("--aggregate-samples", type=int, default=10000, help="replay samples of the q(c) refit")
    parser.add_argument("--limit", type=int, default=0, help="at most N training examples per experience (smoke runs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None,
                        help="JSON file of every run's results, rewritten after each run; runs already in it with "
                             "the same settings are kept, not run again (an interrupted benchmark resumes)")
    parser.add_argument("--report", nargs="+", default=None, metavar="JSON",
                        help="print the table of the runs in these --out files (e.g. of parallel processes) and exit")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown or args.seeds < 1:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}" if unknown else "--seeds must be >= 1")

    if args.report:
        print(summary([run for path in args.report for run in json.loads(Path(path).read_text())["runs"]]))
        return 0
    settings = {key: getattr(args, key) for key in SETTINGS}
    results = previous_runs(Path(args.out), settings) if args.out else []
    torch.set_flush_denormal(True)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="No loggers specified")
    device = torch.device(args.device)
    print(f"split MNIST, {args.epochs} epochs, batch {args.batch} + {args.replay} replayed, Adam {args.lr}; "
          f"limit {args.limit or 'none'}; denormals flushed to zero in every row (torch.set_flush_denormal(True)); "
          f"{torch.get_num_threads()} torch threads, device {device}")
    done = {(run["row"], run["seed"]) for run in results}
    try:
        for seed in range(args.seeds):
            todo = [row for row in rows if (row, seed) not in done]
            stream = limited_stream(args.data_root, seed, args.limit) if todo else None
            for row in todo:
                result = run_row(row, stream, seed, args, device)
                results.append(result)
                if args.out:
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(json.dumps({"settings": settings, "runs": results}, indent=1))
                print(f"seed {seed} {ROWS[row]}: {100 * result['final_average_accuracy']:.2f}% "
                      f"({' '.join(f'{100 * a:.1f}' for a in result['accuracy_per_experience'])}), "
                      f"{result['wall_time_s']:.0f} s", flush=True)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
