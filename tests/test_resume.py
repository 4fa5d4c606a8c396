"""Interrupted runs go on exactly: a continual-learning run and a pretraining run are killed with
SIGKILL in the middle of their work, resumed, and end as the uninterrupted runs with the same seed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cl_replay import data
from cl_replay.cli import main
from strategies.run import run_experiment
from test_data import write_idx_files
from test_strategies import synthetic_stream, tiny_cl_config, tiny_model_config

SCRIPT = Path(__file__).resolve().parent / "killable_run.py"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def killable(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_continual_run_killed_in_experience_3_resumes_to_the_same_matrix(tmp_path):
    cl = tiny_cl_config(tmp_path / "whole", out=str(tmp_path / "whole" / "run"), iterations=8, parallel_generator=True)
    whole = run_experiment(cl, tiny_model_config(), stream=synthetic_stream(4), echo=lambda *_: None)

    run = tmp_path / "killed" / "run"
    killed = killable("cl", str(run), "3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    saved = torch.load(run / "resume.pt", weights_only=False)
    assert len(saved["matrix"]) == 2 and not (run / "results.json").exists()
    assert saved["matrix"] == whole["accuracy_matrix"][:2]

    resumed = killable("cl", str(run), "0", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == whole["accuracy_matrix"]
    results = json.loads((run / "results.json").read_text())
    assert results["accuracy_matrix"] == whole["accuracy_matrix"] and len(results["timing"]) == 4


@pytest.mark.parametrize("generator", ["buffer", "cpvae"])
def test_in_process_runs_resume_after_an_interruption(tmp_path, generator, monkeypatch):
    """Without a worker process: the buffer's memory and RNG, the generator's optimizer in the main process."""
    stream = synthetic_stream(3)
    whole = run_experiment(tiny_cl_config(tmp_path / "a", generator=generator, iterations=6),
                           tiny_model_config(), stream=stream, echo=lambda *_: None)
    from strategies.replay import ReplayStrategy

    original = ReplayStrategy.train

    def interrupted(self, experience, **kwargs):
        if self.t == 2:
            raise KeyboardInterrupt
        return original(self, experience, **kwargs)

    cl = tiny_cl_config(tmp_path / "b", generator=generator, iterations=6)
    monkeypatch.setattr(ReplayStrategy, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cl, tiny_model_config(), stream=stream, echo=lambda *_: None)
    monkeypatch.setattr(ReplayStrategy, "train", original)
    resumed = run_experiment(cl, tiny_model_config(), stream=stream, echo=lambda *_: None, resume=True)
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
    # Avalanche's metrics went on too: the log ends with the same forgetting.
    logs = [(tmp_path / part / "run" / "log.txt").read_text() for part in ("a", "b")]
    assert [line for line in logs[1].splitlines() if "StreamForgetting" in line][-1:] == \
        [line for line in logs[0].splitlines() if "StreamForgetting" in line][-1:] != []


def test_cli_resume_refuses_a_folder_without_a_run_and_protocol_changes(tmp_path):
    result = CliRunner().invoke(main, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "resume.pt" in result.output
    (tmp_path / "config.yaml").write_text("stream: split_mnist\n")
    (tmp_path / "resume.pt").write_bytes(b"")
    result = CliRunner().invoke(main, ["run", "--resume", str(tmp_path), "--iterations", "5"])
    assert result.exit_code == 2 and "iterations" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "resume.pt"]


PRETRAIN = ["pretrain", "--model", "cpvae", "--dataset", "mnist", "--categories", "3", "--latent-dim", "4",
            "--batch-size", "10", "--warmup", "2", "--is-samples", "0", "--device", "cpu", "--no-download"]


def test_pretraining_killed_in_epoch_3_resumes_to_the_same_model(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_idx_files(root / "MNIST" / "raw", n_train=60, n_test=50)
    monkeypatch.setattr(data, "MNIST_TRAIN_SIZE", 40)
    args = [*PRETRAIN, "--epochs", "4", "--data-root", str(root)]
    whole = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "whole")], catch_exceptions=False)
    assert whole.exit_code == 0, whole.output

    run = tmp_path / "killed"
    killed = killable("pretrain", "40", "3", "--", *args, "--out", str(run))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 2
    resumed = killable("pretrain", "40", "0", "--", "pretrain", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    expected = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=False)["model"]
    got = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", run)]
    assert metrics[0]["test_neg_elbo"] == metrics[1]["test_neg_elbo"] and metrics[1]["epochs_trained"] == 4


def test_resuming_a_run_that_stopped_early_trains_no_further(tmp_path):
    from cl_replay.models import ModelConfig, build_model
    from cl_replay.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    x = torch.rand(200, 12).bernoulli()
    config = TrainConfig(epochs=50, warmup=0, patience=2, batch_size=50, is_samples=0)
    first = Trainer(build_model(ModelConfig(input_dim=12, latent_dim=2, hidden=8, categories=2)), config, tmp_path,
                    x[:150], x[150:], binarize_batches=False, image_shape=None)
    first.epoch, first.epochs_without_improvement = 7, 2  # as after an early stop at epoch 7
    first.save("last.pt")
    again = Trainer(build_model(ModelConfig(input_dim=12, latent_dim=2, hidden=8, categories=2)), config, tmp_path,
                    x[:150], x[150:], binarize_batches=False, image_shape=None)
    again.resume()
    again.fit()
    assert again.epoch == 7
