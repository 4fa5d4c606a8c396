import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "avalanche_side_by_side.py"


@pytest.fixture
def side_by_side():
    spec = importlib.util.spec_from_file_location("avalanche_side_by_side", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_side_by_side_resumes_from_its_results_file_and_refuses_other_settings(side_by_side, real_data_root, tmp_path,
                                                                              monkeypatch, capsys):
    out = tmp_path / "plugin.json"
    args = ["--data-root", str(real_data_root), "--rows", "plugin", "--seeds", "1", "--epochs", "1", "--limit", "32",
            "--aggregate-samples", "64", "--threads", "1", "--out", str(out)]
    assert side_by_side.main(args) == 0
    first = json.loads(out.read_text())
    assert [(run["row"], run["seed"]) for run in first["runs"]] == [("plugin", 0)]
    assert 0.0 <= first["runs"][0]["final_average_accuracy"] <= 1.0

    calls = []
    real_run_row = side_by_side.run_row
    monkeypatch.setattr(side_by_side, "run_row", lambda row, stream, seed, *rest: calls.append((row, seed))
                        or real_run_row(row, stream, seed, *rest))
    assert side_by_side.main(args[:5] + ["2"] + args[6:]) == 0  # --seeds 2: only seed 1 is new
    assert calls == [("plugin", 1)]
    assert [run["seed"] for run in json.loads(out.read_text())["runs"]] == [0, 1]

    capsys.readouterr()
    assert side_by_side.main(["--report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "Naive + CPVAEReplayPlugin" in table and "0: " in table and "1: " in table

    with pytest.raises(SystemExit, match="other settings"):
        side_by_side.main(args[:-2] + ["--epochs", "2", "--out", str(out)])
    out.write_text("{not json")
    with pytest.raises(SystemExit, match="not a results file"):
        side_by_side.main(args)


def test_avalanches_default_generator_trains_when_the_first_experience_ends_on_a_single_image(side_by_side):
    """17 images in batches of 16 leave a batch of one in the first experience, where MlpVAE's BatchNorm
    raises; the benchmark drops that batch only, so the row runs."""
    import torch
    from avalanche.benchmarks import nc_benchmark
    from avalanche.training.supervised import GenerativeReplay
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    y = torch.tensor([0] * 9 + [1] * 8 + [2] * 8 + [3] * 8)
    images = TensorDataset(torch.rand(len(y), 1, 28, 28), y)
    benchmark = nc_benchmark(images, images, n_experiences=2, task_labels=False, fixed_class_order=[0, 1, 2, 3])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 4))

    def strategy():
        return GenerativeReplay(model=model, optimizer=torch.optim.Adam(model.parameters()), criterion=torch.nn.CrossEntropyLoss(),
                                train_mb_size=16, train_epochs=1, replay_size=4, evaluator=None)

    with pytest.raises(ValueError, match="more than 1 value per channel"):
        strategy().train(benchmark.train_stream[0])
    patched = strategy()
    side_by_side.without_single_image_batches(patched.generator_strategy)
    for experience in benchmark.train_stream:
        patched.train(experience)
