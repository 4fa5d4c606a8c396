"""``cl-replay pretrain`` end to end on real MNIST: artifacts, resume, interruption, bad input."""
import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cl_replay.cli import main

SMOKE = ["--model", "cpvae", "--dataset", "mnist", "--limit", "300", "--warmup", "1", "--is-samples", "20", "--device", "cpu"]


def pretrain(*args: str):
    return CliRunner().invoke(main, ["pretrain", *args], catch_exceptions=False)


def test_pretrain_writes_every_artifact(tmp_path, real_data_root):
    run = tmp_path / "run"
    result = pretrain(*SMOKE, "--epochs", "2", "--data-root", str(real_data_root), "--out", str(run))
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "metrics.json", "samples.png", "reconstructions.png", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test_neg_elbo", "test_nll", "cluster_accuracy", "cluster_matching", "q_c", "q_c_entropy", "categories_in_use"):
        assert key in metrics, key
    assert metrics["epochs_trained"] == 2 and metrics["cluster_matching"] == "hungarian"
    assert sum(metrics["q_c"]) == pytest.approx(1.0, abs=1e-4)
    assert 0 < metrics["test_nll"] < metrics["test_neg_elbo"] + 1.0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == "cpvae" and config["limit"] == 300 and config["lr"] == 5e-4

    events = EventAccumulator(str(run)).Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"train/reconstruction", "train/kl_c", "train/kl_z", "train/beta", "train/temperature", "train/lr",
            "val/neg_elbo", "test/test_neg_elbo", "test/test_nll", "test/cluster_accuracy"} <= scalars
    assert {"samples", "final/samples", "final/reconstructions"} <= images
    assert "val/category" in events.Tags()["histograms"]

    # the best checkpoint carries the aggregated posterior used for generation
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    torch.testing.assert_close(state["model"]["aggregated_posterior"].sum(), torch.tensor(1.0))


def test_resume_continues_from_the_saved_epoch(tmp_path, real_data_root):
    run = tmp_path / "run"
    assert pretrain(*SMOKE, "--epochs", "1", "--data-root", str(real_data_root), "--out", str(run)).exit_code == 0
    result = pretrain("--resume", str(run), "--epochs", "3", "--is-samples", "0")
    assert result.exit_code == 0, result.output
    assert "after epoch 1" in result.output
    assert json.loads((run / "metrics.json").read_text())["epochs_trained"] == 3
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 3


def test_interrupt_saves_a_checkpoint_that_resumes(tmp_path, real_data_root, interrupt_at_epoch):
    run = tmp_path / "run"
    interrupt_at_epoch(2)
    result = CliRunner().invoke(main, ["pretrain", *SMOKE, "--epochs", "3", "--data-root", str(real_data_root), "--out", str(run)])
    assert result.exit_code == 130
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    interrupt_at_epoch(None)
    assert pretrain("--resume", str(run), "--is-samples", "0").exit_code == 0
    assert json.loads((run / "metrics.json").read_text())["epochs_trained"] == 3


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, real_data_root):
    run = tmp_path / "run"
    assert pretrain(*SMOKE, "--epochs", "1", "--is-samples", "0", "--data-root", str(real_data_root), "--out", str(run)).exit_code == 0
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(main, ["pretrain", "--resume", str(run)])
    assert result.exit_code != 0
    assert "last.pt" in result.output and "corrupt" in result.output


def test_unknown_config_key_names_the_closest_valid_one(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: cpvae\nlatnet_dim: 20\n")
    result = CliRunner().invoke(main, ["pretrain", "--config", str(config)])
    assert result.exit_code == 2
    assert "latnet_dim" in result.output and "latent_dim" in result.output


def test_missing_dataset_offline_lists_the_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    empty.chmod(0o555)
    result = CliRunner().invoke(main, ["pretrain", "--data-root", str(empty), "--epochs", "1", "--out", str(tmp_path / "run")])
    empty.chmod(0o755)
    assert result.exit_code != 0
    assert "train-images-idx3-ubyte.gz" in result.output
