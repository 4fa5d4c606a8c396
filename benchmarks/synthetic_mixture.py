"""Paper section 5.1: can the learned generator recover a bimodal 1-d density?

Data: 50000 points x ~ 1/2 N(0.1, 0.1^2) + 1/2 N(1, 0.1^2) (the second argument read as a standard
deviation), 45000 for training and 5000 for validation. Models: CP-VAE with K = 2 (known number of
modes) and K = 150 (unknown), and the standard VAE for contrast, all with the paper's gated 2x300
networks, z of dimension 40 and a Gaussian likelihood. Generation follows paper section 5:
c ~ q(c), z ~ p(z|c), x ~ p(x|z,c) (the VAE: z ~ N(0, I)).

    python benchmarks/synthetic_mixture.py --epochs 30 --out benchmarks/out/synthetic

Prints, per model, the fraction of generated mass within 0.25 of each mode and in the gap between
them (|x - 0.55| < 0.15), and writes a histogram PNG beside the ground truth.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cl_replay.models import ModelConfig, build_model  # noqa: E402
from cl_replay.trainer import TrainConfig, Trainer  # noqa: E402

MODES = (0.1, 1.0)


def mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    modes = torch.tensor(MODES)[torch.randint(0, 2, (n,), generator=generator)]
    return (modes + 0.1 * torch.randn(n, generator=generator)).unsqueeze(1)


@torch.no_grad()
def generate(model, n: int) -> torch.Tensor:
    """Ancestral samples x ~ p(x) including the observation noise of the Gaussian likelihood."""
    if hasattr(model, "aggregated_posterior"):
        means, _ = model.sample_with_categories(n)
    else:
        means = model.sample(n)
    return model.likelihood.sample(means).squeeze(1)


def mass_report(x: torch.Tensor) -> dict[str, float]:
    return {
        "near_0.1": float(((x - MODES[0]).abs() < 0.25).float().mean()),
        "near_1.0": float(((x - MODES[1]).abs() < 0.25).float().mean()),
        "gap": float(((x - 0.55).abs() < 0.15).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/out/synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior-init", default="normal", choices=("normal", "kmeans", "umap"),
                        help="CP-VAE categories: the paper's N(0, 0.1^2) means (default), or the k-means or UMAP restart.")
    args = parser.parse_args()
    out = Path(args.out)
    generator = torch.Generator().manual_seed(args.seed)
    data = mixture(50000, generator)
    train_x, val_x = data[:45000], data[45000:]
    truth = mixture(20000, generator).squeeze(1)
    results = {"ground truth": mass_report(truth)}
    samples = {"ground truth": truth}
    for name, model_name, categories in (("CP K=2", "cpvae", 2), ("CP K=150", "cpvae", 150), ("VAE", "vae", 1)):
        torch.manual_seed(args.seed)
        config = ModelConfig(model=model_name, input_dim=1, categories=categories, likelihood="gaussian",
                             temperature_epochs=args.warmup, prior_init=args.prior_init)
        model = build_model(config)
        train_config = TrainConfig(epochs=args.epochs, warmup=args.warmup, patience=args.epochs, is_samples=0)
        trainer = Trainer(model, train_config, out / name.replace(" ", "_").replace("=", ""), train_x, val_x,
                          binarize_batches=False, image_shape=None)
        started = time.perf_counter()
        trainer.fit()
        model.load_state_dict(torch.load(trainer.run_dir / "checkpoints" / "best.pt", weights_only=False)["model"])
        model.eval()
        model.fit_generation(train_x)
        samples[name] = generate(model, 20000)
        results[name] = mass_report(samples[name]) | {"seconds": time.perf_counter() - started}
        if hasattr(model, "aggregated_posterior"):
            results[name]["categories_in_use"] = int((model.aggregated_posterior > 1e-3).sum())

    figure, axes = plt.subplots(1, len(samples), figsize=(3.2 * len(samples), 2.6), sharey=True)
    for axis, (name, x) in zip(axes, samples.items()):
        axis.hist(x.numpy(), bins=120, range=(-0.6, 1.7), density=True, color="tab:blue")
        axis.set_title(name)
    figure.tight_layout()
    figure.savefig(out / "histograms.png", dpi=120)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{args.epochs} epochs (warm-up {args.warmup}), CPU threads {torch.get_num_threads()}")
    print("| model | mass near 0.1 | mass near 1.0 | mass in the gap | categories in use |")
    print("|---|---:|---:|---:|---:|")
    for name, row in results.items():
        print(f"| {name} | {row['near_0.1']:.3f} | {row['near_1.0']:.3f} | {row['gap']:.3f} | {row.get('categories_in_use', '')} |")
    print(f"histograms: {out / 'histograms.png'}")


if __name__ == "__main__":
    main()
