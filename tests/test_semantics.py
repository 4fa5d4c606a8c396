"""Category semantics of a categorical generator: per-category majority class, purity, and the
replay's class histogram, on a CP-VAE whose decoder writes its category into the image."""
import torch
from torch import nn

from cl_replay.models import CPVAE, ModelConfig
from strategies.generator_core import GeneratorCore
from strategies.semantics import category_semantics, save_labelled_rows

K, LATENT = 4, 2


class CategoryWriter(nn.Module):
    """Decoder logits: pixel k is on for category k; pixel K is on when z_0 > 0."""

    def forward(self, zc: torch.Tensor) -> torch.Tensor:
        z, c = zc[..., :LATENT], zc[..., LATENT:]
        return 30.0 * (torch.cat([c, (z[..., :1] > 0).float()], -1) - 0.5)


def predict_from_pixels(x: torch.Tensor) -> torch.Tensor:
    """Category 0 -> class 'a'; 1 -> 'b'; 2 -> 'a'; 3 -> 'c' if z_0 > 0 else 'b' (a 50/50 mix)."""
    category = x[:, :K].argmax(1)
    classes = torch.tensor([0, 1, 0, 1])[category]
    return torch.where((category == 3) & (x[:, K] > 0.5), torch.tensor(2), classes)


def test_majority_purity_and_replay_histogram():
    torch.manual_seed(0)
    model = CPVAE(ModelConfig(input_dim=K + 1, latent_dim=LATENT, hidden=8, categories=K), decoder=CategoryWriter())
    with torch.no_grad():
        model.prior.mean.zero_()
        model.aggregated_posterior.copy_(torch.tensor([0.5, 0.3, 0.0, 0.2]))  # category 2 is not in use
    semantics = category_semantics(GeneratorCore(model), predict_from_pixels, ["a", "b", "c"], per_category=4000)
    report = semantics.report
    assert report["categories_in_use"] == 3
    assert [c["category"] for c in report["categories"]] == [0, 1, 3]  # most probable first
    assert [c["majority_class"] for c in report["categories"][:2]] == ["a", "b"]
    assert [c["purity"] for c in report["categories"][:2]] == [1.0, 1.0]
    assert abs(report["categories"][2]["purity"] - 0.5) < 0.03
    histogram = report["replay_class_histogram"]
    assert abs(histogram["a"] - 0.5) < 1e-6
    assert abs(histogram["b"] - (0.3 + 0.1)) < 0.01 and abs(histogram["c"] - 0.1) < 0.01
    assert abs(report["mean_purity"] - (0.5 + 0.3 + 0.2 * 0.5)) < 0.01
    rows = semantics.rows
    assert rows.shape == (3, 10, K + 1)
    assert (rows[0, :, 0] > 0.99).all() and (rows[1, :, 1] > 0.99).all() and (rows[2, :, 3] > 0.99).all()


def test_labelled_rows_png(tmp_path):
    model = CPVAE(ModelConfig(input_dim=4, latent_dim=2, hidden=8, categories=3))
    semantics = category_semantics(GeneratorCore(model), lambda x: torch.zeros(len(x), dtype=torch.long), ["zero"], per_category=20)
    save_labelled_rows(semantics, (1, 2, 2), tmp_path / "rows.png", "title")
    assert (tmp_path / "rows.png").stat().st_size > 1000


def test_generators_without_categories_have_no_semantics():
    from cl_replay.models import build_model

    vae = build_model(ModelConfig(model="vae", input_dim=4, latent_dim=2, hidden=8))
    assert category_semantics(GeneratorCore(vae), lambda x: x[:, 0].long(), ["a"]) is None
