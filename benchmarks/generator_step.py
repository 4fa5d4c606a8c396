"""Cost of one generator training step in continual learning, for the generator variants of
``docs/continual.md``, as ratios to the split-MNIST default (gated 2x300, 128 current +
128 replayed rows):

    python benchmarks/generator_step.py
    python benchmarks/generator_step.py --iterations 20 --rounds 3     # quicker

Each variant runs ``train_generator`` (the loop of ``cl-replay run``, replay drawn from a frozen
copy of the generator as in experience t > 1) for ``--iterations`` steps on one torch thread, on
binarised random images; the variants take turns for ``--rounds`` rounds so that a busy machine
weighs on each alike, and the table gives the median ms per step and its ratio to the first row.
Only ratios measured in one run compare: CPU speed differs between machines and drifts.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from cl_replay.models import ModelConfig, build_model
from strategies.generator_core import GeneratorSchedule, GeneratorState, make_adam, train_generator
from strategies.generators import ReplayGenerator

# name: (ModelConfig changes, current rows, replayed rows, label weight: categories tied to classes if > 0)
VARIANTS = {
    "gated 2x300, 128 + 128 (the default)": ({}, 128, 128, 0.0),
    "gated 2x300, 128 + 64 (`gen_replay_batch_size=64`)": ({}, 128, 64, 0.0),
    "gated 2x300, 128 + 32 (`gen_replay_batch_size=32`)": ({}, 128, 32, 0.0),
    "gated 2x300, 64 + 64 (`gen_batch_size=64`, `gen_replay_batch_size=64`)": ({}, 64, 64, 0.0),
    "gated 2x200, 128 + 128 (`hidden=200`)": ({"hidden": 200}, 128, 128, 0.0),
    "ReLU 2x300, 128 + 128 (`hidden_layer=relu`)": ({"hidden_layer": "relu"}, 128, 128, 0.0),
    "gated 2x300, 128 + 128, categories tied to classes (`gen_label_weight=1`)": ({}, 128, 128, 1.0),
}
CLASSES = 10
SPLIT_MNIST_GENERATOR = dict(model="cpvae", categories=20, latent_dim=40, hidden=300, prior_init="normal",
                             likelihood="bernoulli")


def step_ms(changes: dict, batch: int, replay: int, label_weight: float, data: torch.Tensor, labels: torch.Tensor,
            iterations: int) -> float:
    """ms per step over ``iterations`` steps of ``train_generator``."""
    torch.manual_seed(0)
    generator = ReplayGenerator(build_model(ModelConfig(**{**SPLIT_MNIST_GENERATOR, **changes})), "cpvae")
    previous = generator.frozen_copy()
    schedule = GeneratorSchedule(iterations=iterations, batch_size=batch, replay_batch_size=replay,
                                 temperature_iterations=iterations, aggregate_samples=batch,
                                 label_weight=label_weight, label_classes=CLASSES)
    state = GeneratorState(make_adam(generator.parameters()))
    return train_generator(generator, previous, data, 2, state, schedule, data_y=labels)["ms_per_iteration"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50, help="steps per measurement (default 50)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all variants in turn (default 5)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    data = (torch.rand(4096, 784, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    labels = torch.arange(len(data)) % CLASSES
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (changes, batch, replay, label_weight) in VARIANTS.items():
            times[name].append(step_ms(changes, batch, replay, label_weight, data, labels, args.iterations))
    medians = {name: statistics.median(values) for name, values in times.items()}
    first = next(iter(medians.values()))
    print(f"{args.rounds} rounds of {args.iterations} steps, one torch thread\n")
    print("| generator step | ms per step (median) | ratio |\n|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.1f} | {value / first:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
