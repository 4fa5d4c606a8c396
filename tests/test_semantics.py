"""Category semantics of a categorical generator: per-category majority class, purity, and the
replay's class histogram, on a CP-VAE whose decoder writes its category into the image."""
import torch
from torch import nn

from cl_replay.models import CPVAE, ModelConfig
from strategies.generator_core import GeneratorCore
from strategies.semantics import balanced_category_weights, category_semantics, labelled_rows_image

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


def test_labelled_rows_image():
    model = CPVAE(ModelConfig(input_dim=4, latent_dim=2, hidden=8, categories=3))
    semantics = category_semantics(GeneratorCore(model), lambda x: torch.zeros(len(x), dtype=torch.long), ["zero"], per_category=20)
    pixels = labelled_rows_image(semantics, (1, 2, 2), "title", scale=4)
    rows = len(semantics.report["categories"])
    assert pixels.dtype.name == "uint8" and pixels.shape[2] == 3
    assert pixels.shape[0] == 24 + 4 * (2 + rows * (2 + 2))  # title band, then the enlarged grid
    assert (pixels[24:, :40] < 128).any()  # the labels, left of the samples


def test_generators_without_categories_have_no_semantics():
    from cl_replay.models import build_model

    vae = build_model(ModelConfig(model="vae", input_dim=4, latent_dim=2, hidden=8))
    assert category_semantics(GeneratorCore(vae), lambda x: x[:, 0].long(), ["a"]) is None


def writer_generator(q: list[float]) -> GeneratorCore:
    """The CategoryWriter CP-VAE with a hand-set q(c): class mixes P(y|c) = a; b; a; b/c 50-50."""
    model = CPVAE(ModelConfig(input_dim=K + 1, latent_dim=LATENT, hidden=8, categories=K), decoder=CategoryWriter())
    with torch.no_grad():
        model.prior.mean.zero_()
        model.aggregated_posterior.copy_(torch.tensor(q))
    return GeneratorCore(model)


def test_balanced_weights_make_the_class_histogram_uniform():
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.4], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    q = torch.tensor([0.6, 0.2, 0.15, 0.05], dtype=torch.float64)
    w = balanced_category_weights(mix, q, [0, 1, 2])
    assert torch.all(w >= 0) and abs(float(w.sum()) - 1) < 1e-9
    assert torch.allclose(w @ mix, torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-4)
    # The maximum of sum_y u_y log h_y over the simplex satisfies the KKT conditions:
    # d/dw_k = sum_y u_y P(y|k) / h_y equals 1 where w_k > 0 and is at most 1 elsewhere.
    gradient = mix @ (torch.full((3,), 1 / 3, dtype=torch.float64) / (w @ mix))
    assert torch.all(gradient <= 1 + 1e-3) and torch.allclose(gradient[w > 1e-6], torch.ones(1, dtype=torch.float64), atol=1e-3)


def test_balanced_weights_keep_unused_categories_and_skip_unproduced_classes():
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    w = balanced_category_weights(mix, torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64), [0, 1, 2])
    assert float(w[1]) == 0.0  # q = 0 stays 0; class 2 is produced by no category and is left out
    assert torch.allclose(w, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-3)  # a/b 50-50
    already = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    assert torch.equal(balanced_category_weights(mix, already, [0, 1]), already)


def test_class_balanced_replay_of_a_generator_source():
    """Drawn through the replay source, the replay's class histogram (as the labeller sees it) is
    uniform within sampling error, where q(c) alone gives a / b / c = 70 / 25 / 5 %."""
    from strategies.sources import GeneratorReplay
    from strategies.generator_core import GeneratorSchedule
    from strategies.streams import ExperienceTensors

    torch.manual_seed(1)
    total = 6000
    data = ExperienceTensors(torch.zeros(4, K + 1), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    histograms = {}
    for balance in (False, True):
        source = GeneratorReplay(writer_generator([0.5, 0.15, 0.2, 0.15]), GeneratorSchedule(), class_balance=balance,
                                 balance_samples=400)
        source.trained = True
        source.begin_experience(data, 2, total, classify=predict_from_pixels, replay_classes=[0, 1, 2])
        x = torch.cat([source.sample(100)[0] for _ in range(total // 100)])
        histograms[balance] = torch.bincount(predict_from_pixels(x), minlength=3).double() / total
    assert torch.allclose(histograms[False], torch.tensor([0.7, 0.225, 0.075], dtype=torch.float64), atol=0.02)
    assert torch.allclose(histograms[True], torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03)
    report = source.balance_report
    assert abs(report["replay_class_histogram_balanced"][2] - 1 / 3) < 0.03
    assert abs(report["replay_class_histogram_q"][0] - 0.7) < 0.03


def test_a_class_balanced_run_reports_its_weights_and_histograms(tmp_path):
    from test_strategies import synthetic_stream, tiny_cl_config, tiny_model_config

    from strategies.run import run_experiment

    cl = tiny_cl_config(tmp_path, iterations=6, replay_balance="class", balance_samples=50)
    results = run_experiment(cl, tiny_model_config(), stream=synthetic_stream(3), echo=lambda *_: None)
    balance = [s["class_balance"] for s in results["generator_stats"] if "class_balance" in s]
    assert len(balance) == 2  # experiences 2 and 3 replay
    for t, report in zip((2, 3), balance):
        assert len(report["replay_class_histogram_balanced"]) == 2 * (t - 1)
        assert abs(sum(report["category_weights"]) - 1) < 1e-4
    semantics = results["category_semantics"]
    assert "balanced_replay_class_histogram" in semantics[0] and "balanced_replay_class_histogram" not in semantics[-1]
