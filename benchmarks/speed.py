"""Training throughput of CP-VAE (K = 10) on MNIST at batch 100: cl-replay's trainer against two
conventional DataLoader loops with per-batch binarisation, same model, same initial weights, one process:

- "DataLoader, in-memory tensors": a shuffled DataLoader over a TensorDataset of the prepared
  [0,1] images (the strongest DataLoader baseline: no decoding per item);
- "DataLoader, torchvision MNIST": the idiomatic ``torchvision.datasets.MNIST(transform=ToTensor())``
  (PIL image and tensor conversion per item), first 50000 training images.

Both baselines use torch.optim.Adam with its default implementation.

    python benchmarks/speed.py --data-root ../shared/datasets [--device cpu|cuda] [--epochs 2]

Each contender trains for ``--epochs`` full epochs (50000 examples each) from the same initial
weights; the contenders alternate, and the best epoch time of each is reported. ``--compile`` adds
the trainer with ``compile=True`` (``cl-replay pretrain --compile``); its first epoch includes the
compilation, reported apart as the first epoch's excess over the best.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision import datasets, transforms

from cl_replay.data import load_dataset
from cl_replay.models import ModelConfig, build_model
from cl_replay.trainer import TrainConfig, Trainer, resolve_device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def dataloader_epoch(model, optimizer, loader, device) -> None:
    """The conventional loop: a shuffled DataLoader over host tensors, each batch copied to the device."""
    model.train()
    for batch in loader:
        x = torch.bernoulli(batch[0].to(device, non_blocking=True).flatten(1))
        loss, _ = model.loss(x, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def torchvision_mnist(data_root: str | None, scratch: Path) -> datasets.MNIST:
    """torchvision's MNIST training set; its raw files are copied to a scratch folder first, since
    torchvision extracts next to them and the data root may be read-only."""
    from cl_replay.data import resolve_data_root

    raw = scratch / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (resolve_data_root(data_root) / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(path, raw / path.name)
    return datasets.MNIST(str(scratch), train=True, download=True, transform=transforms.ToTensor())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for the baseline")
    parser.add_argument("--compile", action="store_true", help="also time the trainer with compile=True")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    splits = load_dataset("mnist", args.data_root)
    initial = build_model(ModelConfig(model="cpvae", categories=10))
    n = splits.train.x.shape[0]

    with tempfile.TemporaryDirectory() as run_dir:
        baselines = {
            "DataLoader, in-memory tensors": TensorDataset(splits.train.x),
            "DataLoader, torchvision MNIST": Subset(torchvision_mnist(args.data_root, Path(run_dir)), range(n)),
        }
        loops = {}
        for name, dataset in baselines.items():
            model = copy.deepcopy(initial).to(device)
            loader = DataLoader(dataset, batch_size=100, shuffle=True, num_workers=args.workers,
                                pin_memory=device.type == "cuda")
            loops[name] = (model, torch.optim.Adam(model.parameters(), lr=5e-4), loader)
        trainer_configs = {"cl-replay trainer": TrainConfig(warmup=1)}
        if args.compile:
            trainer_configs["cl-replay trainer, compile=True"] = TrainConfig(warmup=1, compile=True)
        trainers = {name: Trainer(copy.deepcopy(initial).to(device), config, Path(run_dir) / str(i),
                                  splits.train.x.to(device), splits.val.x.to(device))
                    for i, (name, config) in enumerate(trainer_configs.items())}
        times: dict[str, list[float]] = {**{name: [] for name in trainers}, **{name: [] for name in loops}}
        for epoch in range(1, args.epochs + 1):
            for name in times:
                synchronize(device)
                started = time.perf_counter()
                if name in trainers:
                    trainers[name].train_epoch(epoch)
                else:
                    dataloader_epoch(*loops[name], device)
                synchronize(device)
                times[name].append(time.perf_counter() - started)
        for trainer in trainers.values():
            trainer.writer.close()

    throughput = {name: n / min(values) for name, values in times.items()}
    # A loop's best epoch over the trainer's: the trainer's speed-up over a baseline, below 1 for a faster loop.
    relative = {name: throughput["cl-replay trainer"] / throughput[name] for name in times if name != "cl-replay trainer"}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}; torch {torch.__version__}; {args.epochs} epochs each, best epoch reported")
    print("| loop | samples/s | best epoch (s) | best epoch / cl-replay trainer's |")
    print("|---|---:|---:|---:|")
    for name in times:
        ratio = f"{relative[name]:.2f}" if name in relative else ""
        print(f"| {name} | {throughput[name]:.0f} | {min(times[name]):.2f} | {ratio} |")
    if args.compile:
        compiled = times["cl-replay trainer, compile=True"]
        print(f"compilation: about {compiled[0] - min(compiled):.0f} s (first epoch minus the best)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "times": times, "throughput": throughput,
                                               "relative_epoch_time": relative}, indent=2))


if __name__ == "__main__":
    main()
