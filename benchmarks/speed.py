"""Training throughput of CP-VAE (K = 10) on MNIST at batch 100: cl-replay's trainer against a
conventional DataLoader loop with per-batch binarisation, same model and optimizer, one process.

    python benchmarks/speed.py --data-root ../shared/datasets [--device cpu|cuda] [--epochs 2]

Each contender trains for ``--epochs`` full epochs (50000 examples each) from the same initial
weights; the contenders alternate, and the best epoch time of each is reported.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from cl_replay.data import binarize, load_dataset
from cl_replay.models import ModelConfig, build_model
from cl_replay.trainer import TrainConfig, Trainer, resolve_device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def dataloader_epoch(model, optimizer, loader, device) -> None:
    """The conventional loop: a shuffled DataLoader over host tensors, each batch copied to the device."""
    model.train()
    for (x,) in loader:
        x = torch.bernoulli(x.to(device, non_blocking=True))
        loss, _ = model.loss(x, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for the baseline")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    splits = load_dataset("mnist", args.data_root)
    initial = build_model(ModelConfig(model="cpvae", categories=10))
    n = splits.train.x.shape[0]

    baseline_model = copy.deepcopy(initial).to(device)
    baseline_optimizer = torch.optim.Adam(baseline_model.parameters(), lr=5e-4)
    loader = DataLoader(TensorDataset(splits.train.x), batch_size=100, shuffle=True, num_workers=args.workers,
                        pin_memory=device.type == "cuda")

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(copy.deepcopy(initial).to(device), TrainConfig(warmup=1), Path(run_dir),
                          splits.train.x.to(device), splits.val.x.to(device))
        times: dict[str, list[float]] = {"cl-replay trainer": [], "DataLoader loop": []}
        for epoch in range(1, args.epochs + 1):
            for name in times:
                synchronize(device)
                started = time.perf_counter()
                if name == "cl-replay trainer":
                    trainer.train_epoch(epoch)
                else:
                    dataloader_epoch(baseline_model, baseline_optimizer, loader, device)
                synchronize(device)
                times[name].append(time.perf_counter() - started)
        trainer.writer.close()

    throughput = {name: n / min(values) for name, values in times.items()}
    speedup = throughput["cl-replay trainer"] / throughput["DataLoader loop"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}; torch {torch.__version__}; {args.epochs} epochs each, best epoch reported")
    print("| loop | samples/s | best epoch (s) |")
    print("|---|---:|---:|")
    for name in times:
        print(f"| {name} | {throughput[name]:.0f} | {min(times[name]):.2f} |")
    print(f"speed-up: {speedup:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "times": times, "throughput": throughput,
                                               "speedup": speedup}, indent=2))


if __name__ == "__main__":
    main()
