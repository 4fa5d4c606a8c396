"""A non-finite loss stops training with a message naming the step and the term, keeps the last good
checkpoint and exits non-zero; ``--on-nan skip`` skips such steps instead."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cl_replay import data
from cl_replay.cli import main
from cl_replay.divergence import DivergenceError
from cl_replay.models.base import GenerativeModel
from cl_replay.models import build_model
from strategies.generators import GeneratorSchedule, GeneratorState, ReplayGenerator, make_adam, train_generator
from strategies.replay import ReplayStrategy
from strategies.run import run_experiment
from test_data import write_idx_files
from test_strategies import synthetic_stream, tiny_cl_config, tiny_model_config


def poison(monkeypatch, owner, name: str, call: int, term: str) -> None:
    """From its ``call``-th call on, ``owner.name`` returns a NaN loss whose ``term`` is NaN."""
    original, calls = getattr(owner, name), [0]

    def poisoned(self, *args, **kwargs):
        loss, terms = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] >= call:
            terms = dict(terms, **{term: torch.tensor(float("nan"))})
            loss = loss * float("nan")
        return loss, terms

    monkeypatch.setattr(owner, name, poisoned)


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    write_idx_files(root / "MNIST" / "raw", n_train=60, n_test=50)
    monkeypatch.setattr(data, "MNIST_TRAIN_SIZE", 40)
    return root


PRETRAIN = ["pretrain", "--categories", "3", "--latent-dim", "4", "--batch-size", "10", "--warmup", "1",
            "--is-samples", "0", "--device", "cpu", "--epochs", "3"]


def test_pretraining_stops_at_a_nan_and_keeps_the_last_good_checkpoint(tmp_path, tiny_mnist, monkeypatch):
    poison(monkeypatch, GenerativeModel, "loss", 6, "kl_z")  # 4 training steps per epoch: in epoch 2
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [*PRETRAIN, "--data-root", str(tiny_mnist), "--out", str(run)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.search(r"the loss became nan at epoch 2, step \d \(non-finite terms: kl_z\)", result.output)
    assert "holds epoch 1" in result.output
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert not (run / "metrics.json").exists()


def test_pretraining_can_skip_nan_steps(tmp_path, tiny_mnist, monkeypatch):
    original = GenerativeModel.loss
    calls = [0]

    def one_bad_step(self, *args, **kwargs):
        loss, terms = original(self, *args, **kwargs)
        calls[0] += 1
        return (loss * float("nan"), terms) if calls[0] == 2 else (loss, terms)

    monkeypatch.setattr(GenerativeModel, "loss", one_bad_step)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [*PRETRAIN, "--data-root", str(tiny_mnist), "--out", str(run), "--on-nan", "skip"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 of 4 steps" in result.output
    assert json.loads((run / "metrics.json").read_text())["epochs_trained"] == 3


def test_classifier_nan_stops_the_run_after_the_last_finished_experience(tmp_path, monkeypatch):
    original = ReplayStrategy.criterion

    def nan_in_experience_2(self):
        loss = original(self)
        return loss * float("nan") if self.t == 2 and self.clock.train_epoch_iterations == 2 else loss

    monkeypatch.setattr(ReplayStrategy, "criterion", nan_in_experience_2)
    cl = tiny_cl_config(tmp_path, generator="buffer", iterations=5)
    with pytest.raises(DivergenceError, match="experience 2, classifier iteration 3") as info:
        run_experiment(cl, stream=synthetic_stream(3), echo=lambda *_: None)
    assert "current" in str(info.value) and "--resume" in str(info.value)
    assert len(torch.load(Path(cl.out) / "resume.pt", weights_only=False)["matrix"]) == 1
    skipped = run_experiment(tiny_cl_config(tmp_path / "skip", generator="buffer", iterations=5, on_nan="skip"),
                             stream=synthetic_stream(3), echo=lambda *_: None)
    assert [t["classifier_skipped_steps"] for t in skipped["timing"]] == [0, 1, 0]


def test_generator_nan_names_the_generator_iteration_and_term():
    generator = ReplayGenerator(build_model(tiny_model_config()), "cpvae")
    original = generator.model.elbo_terms
    generator.model.elbo_terms = lambda x: dict(original(x), kl_c=torch.full((x.shape[0],), float("nan")))
    schedule = GeneratorSchedule(iterations=3, batch_size=8, replay_batch_size=8, temperature_iterations=3,
                                 aggregate_samples=16)
    state = GeneratorState(make_adam(generator.parameters()))
    with pytest.raises(DivergenceError, match="experience 1, generator iteration 1.*kl_c"):
        train_generator(generator, None, torch.rand(32, 64), 1, state, schedule)
    stats = train_generator(generator, None, torch.rand(32, 64), 1, state,
                            GeneratorSchedule(**{**vars(schedule), "on_nan": "skip"}))
    assert stats["skipped_steps"] == 3


def test_a_diverging_generator_in_the_worker_process_stops_the_run(tmp_path):
    """A real divergence (an absurd learning rate) in the parallel generator process."""
    cl = tiny_cl_config(tmp_path, iterations=8, parallel_generator=True, gen_lr=1e12)
    with pytest.raises(DivergenceError, match=r"experience 1, generator iteration \d+ \(non-finite terms: .*kl"):
        run_experiment(cl, tiny_model_config(), stream=synthetic_stream(2), echo=lambda *_: None)
    assert not (Path(cl.out) / "resume.pt").exists()
