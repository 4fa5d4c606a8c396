"""Tests of the continual-learning package ``strategies``: streams, replay sampling, labels of
replay, generator training across experiences, run outputs, bounds, CLI and summaries.

Everything runs on tiny synthetic streams (8x8 images, small networks, a few iterations) on the
CPU; one test reads real MNIST from the shared datasets folder and skips without it.
"""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cl_replay.config import ConfigError
from cl_replay.models import ModelConfig, build_model
from strategies.generators import (
    CategorySchedule,
    GeneratorReplaySampler,
    GeneratorSchedule,
    GeneratorState,
    ReplayChunks,
    ReplayGenerator,
    make_adam,
    train_generator,
)
from strategies.generator_core import category_mask
from strategies.replay import MLPClassifier, ReplayStrategy
from strategies.sources import GeneratorReplay, ReplaySource
from strategies.run import CLConfig, average_forgetting, load_config, run_experiment
from strategies.streams import build_stream, stream_from_tensors
from strategies.summary import summarize_cl_runs

SIDE = 8
DIM = SIDE * SIDE


@pytest.fixture(autouse=True)
def _single_thread_cpu():
    """Tiny networks: one thread avoids OpenMP stalls on a shared 2-core machine; flush denormals."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_num_threads(threads)


def synthetic_stream(n_experiences: int = 5, per_class: int = 60, scenario: str = "class", seed: int = 0):
    """2 classes per experience; each class is a fixed random grey prototype plus small noise."""
    g = torch.Generator().manual_seed(seed)
    classes = 2 * n_experiences
    prototypes = (torch.rand(classes, DIM, generator=g) > 0.5).float() * 0.8 + 0.1

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(classes).repeat_interleave(n)
        x = (prototypes[y] + 0.1 * torch.randn(len(y), DIM, generator=g)).clamp(0, 1)
        return x, y

    train_x, train_y = draw(per_class)
    test_x, test_y = draw(per_class // 3)
    groups = [[2 * i, 2 * i + 1] for i in range(n_experiences)]
    stream = stream_from_tensors("synthetic", train_x, train_y, test_x, test_y, groups, scenario=scenario)
    stream.image_shape = (1, SIDE, SIDE)
    return stream


def tiny_model_config(**changes) -> ModelConfig:
    config = ModelConfig(model="cpvae", input_dim=DIM, latent_dim=4, hidden=32, categories=6, likelihood="bernoulli")
    return replace(config, **changes)


def tiny_cl_config(tmp_path: Path, **changes) -> CLConfig:
    values = dict(stream="split_mnist", generator="cpvae", iterations=5, batch_size=16, replay_batch_size=16,
                  fc_units=32, aggregate_samples=200, eval_batch_size=64, grid_samples=20, progress=False,
                  parallel_generator=False, out=str(tmp_path / "run"))
    values.update(changes)
    return CLConfig(**values)


def make_strategy(stream, replay: ReplaySource, iterations: int = 20, replay_labels: str = "hard", **kwargs):
    torch.manual_seed(0)
    model = MLPClassifier(DIM, stream.num_classes, units=32)
    return ReplayStrategy(
        model=model, optimizer=make_adam(model.parameters(), lr=1e-2), replay=replay, num_classes=stream.num_classes,
        scenario=stream.scenario, task_classes=stream.experience_classes, iterations=iterations, train_mb_size=16,
        replay_mb_size=16, eval_mb_size=64, replay_labels=replay_labels, tensor_source=stream.tensors, **kwargs,
    )


def tiny_generator_replay(iterations: int = 20, batch_hook=None, model: str = "cpvae") -> GeneratorReplay:
    torch.manual_seed(0)
    generator = ReplayGenerator(build_model(tiny_model_config(model=model)), model)
    schedule = GeneratorSchedule(iterations=iterations, batch_size=16, replay_batch_size=16,
                                 temperature_iterations=iterations, aggregate_samples=200)
    return GeneratorReplay(generator, schedule, lr=3e-3, batch_hook=batch_hook)


# --------------------------------------------------------------------------- replay sampling


def test_replay_category_counts_follow_hand_set_q_c():
    generator = ReplayGenerator(build_model(tiny_model_config(categories=5)))
    q = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0])
    generator.model.aggregated_posterior.copy_(q)
    # Avalanche's generate(n): exactly category_counts(n) samples of each category.
    seen = []
    original = generator.model.sample_with_categories

    def spy(n, category=None, counts=None):
        x, c = original(n, category, counts)
        seen.append(torch.bincount(c, minlength=5))
        return x, c

    generator.model.sample_with_categories = spy
    x = generator.generate(16)
    assert x.shape == (16, DIM) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert seen[-1].tolist() == [8, 4, 2, 2, 0]
    # The classifier's sampler: a schedule over the experience's replay with totals exactly ∝ q(c).
    sampler = GeneratorReplaySampler(generator, total=800)
    totals = torch.zeros(5, dtype=torch.long)
    for _ in range(100):
        counts = sampler.schedule.next_counts(8)
        assert int(counts.sum()) == 8
        totals += counts
    assert totals.tolist() == [400, 200, 100, 100, 0]
    sampler.sample(8)
    assert int(seen[-1].sum()) == 8 and seen[-1][4] == 0  # the empty category is never replayed
    # Largest-remainder rounding when q(c) * n is not integral.
    assert generator.model.category_counts(10, torch.tensor([0.37, 0.33, 0.30])).tolist() == [4, 3, 3]


def test_replay_drawn_in_chunks_keeps_the_categories_of_batch_by_batch_replay():
    """A hand-set q(c): whatever the chunk, every served batch has the requested size and the
    categories the schedule gives it batch by batch, so the experience's totals stay exactly those
    of ``category_counts``, and the schedule is never drawn past the experience."""
    generator = ReplayGenerator(build_model(tiny_model_config(categories=5)))
    generator.model.aggregated_posterior.copy_(torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0]))
    frozen = generator.frozen_copy()
    original = frozen.model.sample_with_categories

    def tagged(n, category=None, counts=None):  # every sample's first pixel says its category
        x, c = original(n, category, counts)
        x[:, 0] = c.to(x.dtype)
        return x, c

    frozen.model.sample_with_categories = tagged
    batch, iterations = 16, 50
    total = batch * iterations
    per_batch = {}
    for chunk in (1, 7, 50):  # 7 does not divide 50: the last chunk holds the one batch left
        sampler = GeneratorReplaySampler(frozen, total, seed_generator=torch.Generator().manual_seed(3))
        sizes = []
        draw = lambda m: sizes.append(m) or sampler.sample(m)  # noqa: E731
        chunks = ReplayChunks(draw, batch, chunk, total)
        batches = [chunks.next() for _ in range(iterations)]
        assert all(b.shape == (batch, DIM) for b in batches)
        assert sizes == [batch * chunk] * (iterations // chunk) + [batch * (iterations % chunk)] * (iterations % chunk > 0)
        per_batch[chunk] = torch.stack([torch.bincount(b[:, 0].long(), minlength=5) for b in batches])
        assert sampler.schedule.drawn.tolist() == [400, 200, 100, 100, 0]
    assert per_batch[1].sum(0).tolist() == [400, 200, 100, 100, 0]
    assert torch.equal(per_batch[7], per_batch[1]) and torch.equal(per_batch[50], per_batch[1])
    assert len({tuple(row.tolist()) for row in per_batch[1]}) > 1  # batches are random splits of the schedule


def test_category_schedule_refills_and_is_random_within_batches():
    schedule = CategorySchedule(torch.tensor([3, 1]), torch.Generator().manual_seed(0))
    draws = [schedule.next_counts(1) for _ in range(8)]  # two passes over the 4-sample schedule
    assert torch.stack(draws).sum(0).tolist() == [6, 2]
    assert torch.stack(draws[:4]).sum(0).tolist() == [3, 1]


# --------------------------------------------------------------------------- labels of replay


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


class _FixedReplay(ReplaySource):
    def active(self, t):
        return True

    def sample(self, n):
        return torch.rand(n, DIM), None, None


def test_replay_labels_come_from_the_frozen_previous_classifier_not_the_current_one():
    stream = synthetic_stream(2)
    for labels in ("hard", "soft"):
        strategy = make_strategy(stream, _FixedReplay(), replay_labels=labels)
        plugin = strategy.replay_plugin
        plugin.labels.seen_before[:] = False
        plugin.labels.seen_before[[0, 1]] = True  # classes of experience 1
        strategy.model = _FixedLogits([5.0, 0.0, 0.0, 0.0])  # current: class 0
        plugin.previous_model = _FixedLogits([0.0, 3.0, 9.0, 0.0])  # previous: class 1 among {0, 1}
        batch = plugin.draw_replay(6)
        (bias, target), = batch.heads
        if labels == "hard":
            assert target.tolist() == [1] * 6
        else:
            expected = torch.softmax(torch.tensor([0.0, 3.0]) / 2.0, 0)
            assert torch.allclose(target[:, :2], expected.expand(6, 2), atol=1e-6)
            assert float(target[:, 2:].abs().max()) == 0.0  # classes not seen before get no mass


def test_previous_classifier_is_frozen_at_the_end_of_the_previous_experience(tmp_path):
    stream = synthetic_stream(2)
    replay = tiny_generator_replay(iterations=10)
    strategy = make_strategy(stream, replay, iterations=15)
    strategy.train(stream.train_stream[0])
    after_first = copy.deepcopy(strategy.model.state_dict())
    strategy.train(stream.train_stream[1])
    frozen = strategy.previous_model.state_dict()
    current = strategy.model.state_dict()
    assert all(torch.equal(frozen[k], after_first[k]) for k in after_first)
    assert any(not torch.equal(current[k], after_first[k]) for k in after_first)
    assert not any(p.requires_grad for p in strategy.previous_model.parameters())
    # The recorded replay targets are the frozen classifier's arg-max over the classes of experience 1.
    batch = strategy.last_replay
    expected = strategy.previous_model(batch.x)[:, :2].argmax(1)
    assert torch.equal(batch.heads[0][1], expected)


# --------------------------------------------------------------------------- generator across experiences


def _neg_elbo(generator: ReplayGenerator, x: torch.Tensor) -> float:
    generator.model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        return float(generator.model.loss(x, 1.0)[1]["neg_elbo"])


def test_generator_trains_on_replay_plus_new_data_and_keeps_old_data():
    stream = synthetic_stream(2, per_class=80)
    batches: list[tuple[int, int]] = []
    replay = tiny_generator_replay(iterations=300, batch_hook=lambda x, r: batches.append((len(x), 0 if r is None else len(r))))
    strategy = make_strategy(stream, replay, iterations=5)
    strategy.train(stream.train_stream[0])
    assert batches and all(r == 0 for _, r in batches)  # experience 1: nothing to replay yet
    after_first = copy.deepcopy(replay.generator)
    old_data = stream.test[0].x
    batches.clear()
    strategy.train(stream.train_stream[1])
    assert len(batches) == 300 and all(b == (16, 16) for b in batches)  # 16 current + 16 replayed
    assert strategy.replay_stats[-1]["replay_samples"] == 300 * 16
    before, after = after_first.state_dict(), replay.generator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it kept learning
    # Without replay the same generator forgets experience 1 much more.
    forgetful = copy.deepcopy(after_first)
    torch.manual_seed(0)
    train_generator(forgetful, None, stream.train[1].x, 2, GeneratorState(make_adam(forgetful.parameters(), 3e-3)),
                    replay.schedule)
    with_replay, without_replay = _neg_elbo(replay.generator, old_data), _neg_elbo(forgetful, old_data)
    assert with_replay < without_replay - 1.0, (with_replay, without_replay)
    assert with_replay < _neg_elbo(after_first, old_data) + 0.25 * abs(_neg_elbo(after_first, old_data))
    # q(c) was refitted over current data and replay: a distribution over the categories.
    q = replay.generator.q_c
    assert abs(float(q.sum()) - 1.0) < 1e-5 and float(q.min()) >= 0


def test_categories_tied_to_classes_keep_each_class_in_its_own_categories_across_experiences():
    """Experience 2's generator sees classes 0 and 1 only through its own replay, labelled by the
    category each sample was drawn from: the old classes stay in their categories."""
    assert category_mask(torch.tensor([1, 2]), 8, 4).tolist() == [[k % 4 == 1 for k in range(8)],
                                                                  [k % 4 == 2 for k in range(8)]]
    stream = synthetic_stream(2, per_class=80)
    torch.manual_seed(0)
    generator = ReplayGenerator(build_model(tiny_model_config(categories=8)), "cpvae")
    schedule = GeneratorSchedule(iterations=300, batch_size=16, replay_batch_size=16, temperature_iterations=300,
                                 aggregate_samples=200, label_weight=1.0, label_classes=4)
    state = GeneratorState(make_adam(generator.parameters(), 3e-3))
    with pytest.raises(ValueError, match="labels"):
        train_generator(generator, None, stream.train[0].x, 1, state, schedule)
    train_generator(generator, None, stream.train[0].x, 1, state, schedule, data_y=stream.train[0].y)
    previous = generator.frozen_copy()
    x, c = GeneratorReplaySampler(previous, 64).sample_with_categories(64)[:]
    assert len(x) == len(c) == 64 and set((c % 4).tolist()) == {0, 1}  # replay of experience 1's classes only
    stats = train_generator(generator, previous, stream.train[1].x, 2, state, schedule, data_y=stream.train[1].y)
    assert stats["final"]["category_label_nll"] < 0.1
    for data in stream.test:
        assert (generator.model.categorize(data.x) % 4 == data.y).float().mean() >= 0.95


def test_a_run_ties_categories_to_classes_in_the_worker_where_the_generator_has_enough_categories(tmp_path):
    stream = synthetic_stream(2)
    cl = tiny_cl_config(tmp_path, iterations=8, parallel_generator=True, gen_label_weight=1.0,
                        train_generator_after_last_experience=True)
    results = run_experiment(cl, tiny_model_config(categories=8), stream=stream, echo=lambda *_: None)
    assert all("category_label_nll" in s["final_losses"] for s in results["generator_stats"])
    vae = run_experiment(replace(cl, generator="vae", out=str(tmp_path / "vae")), tiny_model_config(model="vae"),
                         stream=stream, echo=lambda *_: None)  # no categories: nothing to tie
    assert not any("category_label_nll" in s["final_losses"] for s in vae["generator_stats"])
    with pytest.raises(ConfigError, match="gen_label_weight.*4 classes.*categories=3"):
        run_experiment(replace(cl, out=str(tmp_path / "k3")), tiny_model_config(categories=3), stream=stream,
                       echo=lambda *_: None)


# --------------------------------------------------------------------------- whole runs


def test_five_experience_run_writes_every_output(tmp_path):
    stream = synthetic_stream(5)
    cl = tiny_cl_config(tmp_path, iterations=6)
    results = run_experiment(cl, tiny_model_config(), stream=stream, echo=lambda *_: None)
    run = Path(cl.out)
    saved = json.loads((run / "results.json").read_text())
    for key in ("accuracy_matrix", "final_average_accuracy", "average_forgetting", "per_class_accuracy",
                "wall_time_s", "config", "timing"):
        assert key in saved, key
    matrix = torch.tensor(saved["accuracy_matrix"])
    assert matrix.shape == (5, 5) and float(matrix.min()) >= 0 and float(matrix.max()) <= 1
    assert saved["final_average_accuracy"] == pytest.approx(float(matrix[-1].mean()))
    assert saved["average_forgetting"] == pytest.approx(average_forgetting(saved["accuracy_matrix"]))
    assert set(saved["per_class_accuracy"]) == set(stream.class_names)
    assert saved["config"]["generator"] == "cpvae" and saved["config"]["categories"] == 6
    assert saved["wall_time_s"] > 0 and len(saved["timing"]) == 5
    assert [t["generator_iterations"] for t in saved["timing"]] == [6, 6, 6, 6, 0]  # none after the last
    assert all(t["generator_ms_per_iteration"] > 0 for t in saved["timing"][:4])
    for i in range(1, 6):
        assert (run / f"replay_exp{i}.png").stat().st_size > 0
        assert (run / f"replay_categories_exp{i}.png").stat().st_size > 0
    assert (run / "accuracy_matrix.png").stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    for tag in ("replay/categories", "replay/class_histogram"):
        assert [e.step for e in events.Images(tag)] == [1, 2, 3, 4, 5], tag
    log = (run / "log.txt").read_text()
    assert "Top1_Acc_Exp" in log and "StreamForgetting" in log
    assert results["final_average_accuracy"] == saved["final_average_accuracy"]


def test_no_generator_training_after_the_last_experience_leaves_the_accuracies_as_they_are(tmp_path):
    """Nothing replays from a generator trained after the last experience: by default it is not
    trained, which leaves the accuracy matrix exactly as it was; the run keeps the generator of
    the experience before (checkpoint, statistics)."""
    stream = synthetic_stream(3)
    results, replayed = {}, {}
    for after_last in (True, False):
        batches: list[bool] = []
        cl = tiny_cl_config(tmp_path / str(after_last), iterations=6, train_generator_after_last_experience=after_last)
        results[after_last] = run_experiment(cl, tiny_model_config(), stream=stream, echo=lambda *_: None,
                                             batch_hook=lambda x, r: batches.append(r is not None))
        replayed[after_last] = batches
    assert results[False]["accuracy_matrix"] == results[True]["accuracy_matrix"]
    assert replayed[True] == [False] * 6 + [True] * 12 and replayed[False] == [False] * 6 + [True] * 6
    assert [t["generator_iterations"] for t in results[True]["timing"]] == [6, 6, 6]
    assert [t["generator_iterations"] for t in results[False]["timing"]] == [6, 6, 0]
    assert "generator_wall_time_s" not in results[False]["timing"][-1]
    stats = results[False]["generator_stats"]
    assert stats[1]["q_c"] == results[True]["generator_stats"][1]["q_c"] and stats[2]["iterations"] == 0
    checkpoint = torch.load(tmp_path / "False" / "run" / "checkpoint.pt")
    assert torch.allclose(checkpoint["generator"]["model.aggregated_posterior"], torch.tensor(stats[1]["q_c"]), atol=1e-5)


def test_generator_worker_process_matches_the_in_process_protocol(tmp_path):
    stream = synthetic_stream(3)
    cl = tiny_cl_config(tmp_path, iterations=8, parallel_generator=True, train_generator_after_last_experience=True)
    results = run_experiment(cl, tiny_model_config(), stream=stream, echo=lambda *_: None)
    stats = results["generator_stats"]
    assert [s["experience"] for s in stats] == [1, 2, 3]
    assert [s["replay_samples"] for s in stats] == [0, 8 * 16, 8 * 16]
    assert all("waited_for_generator_s" in t for t in results["timing"])
    # The main process holds the worker's final generator (checkpoint) and its q(c).
    checkpoint = torch.load(Path(cl.out) / "checkpoint.pt")
    q = checkpoint["generator"]["model.aggregated_posterior"]
    assert torch.allclose(q, torch.tensor(stats[-1]["q_c"]), atol=1e-5)


def test_joint_and_none_bound_the_stream(tmp_path):
    stream = synthetic_stream(5)
    finals = {}
    for generator in ("none", "joint", "buffer"):
        cl = tiny_cl_config(tmp_path / generator, generator=generator, iterations=30, buffer_per_class=10)
        finals[generator] = run_experiment(cl, stream=stream, echo=lambda *_: None)
    none, joint = finals["none"], finals["joint"]
    assert none["final_average_accuracy"] < 0.4  # fine-tuning forgets: only the last experience survives
    assert joint["final_average_accuracy"] > 0.9
    assert joint["final_average_accuracy"] > none["final_average_accuracy"] + 0.5
    assert len(joint["accuracy_matrix"]) == 1 and joint["average_forgetting"] is None
    assert finals["buffer"]["final_average_accuracy"] > none["final_average_accuracy"] + 0.3


def test_task_incremental_masks_logits_per_task(tmp_path):
    results = {}
    for scenario in ("class", "task"):
        stream = synthetic_stream(3, scenario=scenario)
        cl = tiny_cl_config(tmp_path / scenario, generator="none", scenario=scenario, iterations=30)
        results[scenario] = run_experiment(cl, stream=stream, echo=lambda *_: None)
    assert results["task"]["final_average_accuracy"] > 0.9  # the task label removes the other classes
    assert results["task"]["final_average_accuracy"] > results["class"]["final_average_accuracy"] + 0.4
    # Generated replay in task-IL is labelled for every previous task (soft targets).
    stream = synthetic_stream(3, scenario="task")
    strategy = make_strategy(stream, tiny_generator_replay(iterations=5), iterations=5, replay_labels="soft")
    for experience in stream.train_stream:
        strategy.train(experience)
    heads = strategy.last_replay.heads
    assert len(heads) == 2
    for k, (bias, target) in enumerate(heads):
        assert torch.allclose(target.sum(1), torch.ones(len(target)))
        assert float(target[:, [c for c in range(6) if c not in (2 * k, 2 * k + 1)]].max()) == 0.0


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_categories_tied_to_tasks_keep_every_task_in_its_own_categories(scenario):
    """gen_tie_to=task: category k belongs to task (experience) k mod 3; in experience 3 every
    replayed sample carries the task of its category (0 or 1, never the current 2), and each task's
    data goes to its own categories. Task-incremental, each sample is rehearsed on its task's head
    only; class-incremental, on the one head over the classes seen, like any replay."""
    stream = synthetic_stream(3, scenario=scenario, per_class=80)
    torch.manual_seed(0)
    generator = ReplayGenerator(build_model(tiny_model_config(categories=6)), "cpvae")
    schedule = GeneratorSchedule(iterations=200, batch_size=16, replay_batch_size=16, temperature_iterations=200,
                                 aggregate_samples=200, label_weight=1.0, label_classes=3)
    source = GeneratorReplay(generator, schedule, lr=3e-3, tie_to="task")
    strategy = make_strategy(stream, source, iterations=5, replay_labels="soft")
    drawn = []
    original = source.sample

    def spy(n):
        x, y, t = original(n)
        drawn.append(t)
        return x, y, t

    source.sample = spy
    for experience in stream.train_stream:
        strategy.train(experience)
    tasks = torch.cat(drawn)
    assert set(tasks.tolist()) == {0, 1}
    categories = source.sampler.schedule.drawn
    assert int(categories[[2, 5]].sum()) == 0  # nothing replays from the categories of the current task
    heads = strategy.last_replay.heads
    assert len(heads) == 1
    bias, target = heads[0]
    if scenario == "task":
        for row_bias, row_target in zip(bias, target):  # one task's head per sample, soft targets on it only
            allowed = (row_bias == 0).nonzero().flatten().tolist()
            assert allowed in ([0, 1], [2, 3])
            assert float(row_target[allowed].sum()) == pytest.approx(1.0)
        assert len({tuple((row == 0).nonzero().flatten().tolist()) for row in bias}) == 2  # both old tasks replayed
    else:
        assert (bias == 0).nonzero()[:, 1].unique().tolist() == list(range(6))  # every class seen so far
        assert float(target[:, :4].sum(1).min()) == pytest.approx(1.0)  # labelled as classes of tasks 0 and 1
    # The generator keeps every task in its own categories, old tasks through their tied replay.
    for k, data in enumerate(stream.test[:2]):
        assert (generator.model.categorize(data.x) % 3 == k).float().mean() >= 0.9


def test_tying_categories_to_tasks_needs_a_category_for_every_task(tmp_path):
    cl = tiny_cl_config(tmp_path, gen_label_weight=1.0, gen_tie_to="task", scenario="task")
    with pytest.raises(ConfigError, match="3 tasks.*categories=2"):
        run_experiment(cl, tiny_model_config(categories=2), stream=synthetic_stream(3, scenario="task"),
                       echo=lambda *_: None)


# --------------------------------------------------------------------------- Avalanche interoperability


def test_generator_plugs_into_avalanches_generative_replay():
    from avalanche.benchmarks import nc_benchmark
    from avalanche.training.supervised import GenerativeReplay, VAETraining
    from avalanche.training.plugins import GenerativeReplayPlugin
    from torch.utils.data import TensorDataset

    from strategies.generators import elbo_criterion

    stream = synthetic_stream(2, per_class=16)
    bench = nc_benchmark(TensorDataset(torch.cat([d.x for d in stream.train]), torch.cat([d.y for d in stream.train])),
                         TensorDataset(torch.cat([d.x for d in stream.test]), torch.cat([d.y for d in stream.test])),
                         n_experiences=2, task_labels=False, shuffle=False)
    generator = ReplayGenerator(build_model(tiny_model_config()))
    generator_strategy = VAETraining(model=generator, optimizer=torch.optim.Adam(generator.parameters(), 1e-3),
                                     criterion=elbo_criterion, train_mb_size=16, train_epochs=1,
                                     plugins=[GenerativeReplayPlugin()], evaluator=None)
    solver = MLPClassifier(DIM, 4, units=16)
    strategy = GenerativeReplay(model=solver, optimizer=torch.optim.Adam(solver.parameters(), 1e-3),
                                train_mb_size=16, train_epochs=1, generator_strategy=generator_strategy, evaluator=None)
    for experience in bench.train_stream:
        strategy.train(experience)
    assert generator.generate(5).shape == (5, DIM)
    assert generator.generate().shape == (DIM,)
    assert generator.get_features(torch.rand(3, DIM)).shape[0] == 3


# --------------------------------------------------------------------------- configuration, CLI, summary


def test_config_errors_name_valid_choices():
    with pytest.raises(ConfigError, match="gen_kl_warmup"):
        load_config("split_mnist", overrides={"gen_kl_warmpu": 10})
    with pytest.raises(ConfigError, match="cpvae.*buffer|buffer.*cpvae"):
        load_config("split_mnist", overrides={"generator": "gan"})
    with pytest.raises(ConfigError, match="split_fashion_mnist"):
        load_config("split_cifar")
    with pytest.raises(ConfigError, match="current_weight"):
        load_config("split_mnist", overrides={"current_weight": 1.5})
    cl, model = load_config("split_mnist", overrides={"generator": "vae", "iterations": 7})
    assert cl.iterations == 7 and model.model == "vae" and model.categories == 20


def test_cli_rejects_unknown_stream_and_generator():
    from click.testing import CliRunner

    from strategies.cli import run

    runner = CliRunner()
    result = runner.invoke(run, ["split_cifar", "--generator", "cpvae"])
    assert result.exit_code != 0 and "split_mnist" in result.output and "split_omniglot" in result.output
    result = runner.invoke(run, ["split_mnist", "--generator", "gan"])
    assert result.exit_code != 0 and "cpvae" in result.output and "joint" in result.output
    result = runner.invoke(run, ["split_mnist", "--set", "itterations=3"])
    assert result.exit_code != 0 and "iterations" in result.output


def test_cli_runs_a_tiny_stream(tmp_path, real_data_root):
    from click.testing import CliRunner

    from strategies.cli import run

    out = tmp_path / "cli"
    result = CliRunner().invoke(run, [
        "split_mnist", "--generator", "vae", "--iterations", "2", "--data-root", str(real_data_root), "--out", str(out),
        "--no-progress", "--set", "aggregate_samples=100", "--set", "grid_samples=10", "--replay-labels", "hard",
    ])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["accuracy_matrix"]) == 5 and saved["config"]["replay_labels"] == "hard"  # the flag beats the file


def test_summary_groups_seeds(tmp_path):
    for seed, accuracy in ((0, 0.90), (1, 0.94), (2, 0.92)):
        d = tmp_path / f"cpvae{seed}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps({
            "stream": "split_mnist", "generator": "cpvae", "scenario": "class", "seed": seed,
            "final_average_accuracy": accuracy, "average_forgetting": 0.05, "wall_time_s": 300.0 + seed}))
    d = tmp_path / "none0"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "stream": "split_mnist", "generator": "none", "scenario": "class", "seed": 0,
        "final_average_accuracy": 0.2, "average_forgetting": None, "wall_time_s": 60.0}))
    table = summarize_cl_runs(sorted(tmp_path.iterdir()))
    lines = table.splitlines()
    assert lines[0].startswith("| stream") and len(lines) == 4
    assert "| cpvae |" in lines[2] and "92.00 ± 2.00" in lines[2] and "301" in lines[2] and "| 3 |" in lines[2]
    assert "0: 90.00, 1: 94.00, 2: 92.00" in lines[2]
    assert "| none |" in lines[3] and "20.00 |" in lines[3]


def test_summary_separates_variants_of_a_generator(tmp_path):
    for name, balance, seed, accuracy in (("a0", "none", 0, 0.95), ("a1", "none", 1, 0.93),
                                          ("b0", "class", 0, 0.96), ("b1", "class", 1, 0.97)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({
            "stream": "split_mnist", "generator": "cpvae", "scenario": "class", "seed": seed,
            "final_average_accuracy": accuracy, "average_forgetting": 0.05, "wall_time_s": 300.0,
            "config": {"seed": seed, "out": str(tmp_path / name), "replay_balance": balance, "iterations": 2000}}))
    lines = summarize_cl_runs(sorted(tmp_path.iterdir())).splitlines()
    assert len(lines) == 4
    assert "cpvae (replay_balance=class)" in lines[2] and "96.50 ± 0.71" in lines[2]
    assert "cpvae (replay_balance=none)" in lines[3] and "94.00 ± 1.41" in lines[3]


# --------------------------------------------------------------------------- real data


def test_real_split_mnist_stream(real_data_root):
    stream = build_stream("split_mnist", data_root=real_data_root, seed=0)
    assert stream.experience_classes == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert sum(len(d) for d in stream.test) == 10000 and sum(len(d) for d in stream.train) == 50000
    first = stream.train[0]
    assert set(first.y.unique().tolist()) == {0, 1}
    assert 0.0 <= float(first.x.min()) and float(first.x.max()) <= 1.0
    assert bool(((first.x > 0) & (first.x < 1)).any())  # grey, not binarised
    for experience, data in zip(stream.train_stream, stream.train):
        assert stream.tensors(experience.dataset) is data
        assert len(experience.dataset) == len(data)
    permuted = build_stream("split_mnist", data_root=real_data_root, seed=1, scenario="task")
    order = permuted.class_order
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert [int(d.t.unique()) for d in permuted.test] == [0, 1, 2, 3, 4]
    assert [exp.task_label for exp in permuted.test_stream] == [0, 1, 2, 3, 4]


class _SwitchThreads:
    """A progress bar that moves training to ``threads`` torch threads after ``after`` iterations."""

    def __init__(self, after: int, threads: int) -> None:
        self.after, self.threads, self.done = after, threads, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.done == self.after:
            torch.set_num_threads(self.threads)


@pytest.mark.parametrize("model", ["cpvae", "vae"])
def test_generator_training_gives_the_same_bits_when_its_threads_change(model):
    """What lending the classifier's threads to the generator (``pool_threads``) rests on: MNIST-sized
    generators (tensors large enough for torch to split over threads) trained for an experience with replay
    end bit for bit the same whether they stay on one thread or move to two mid-way."""
    config = ModelConfig(model=model, input_dim=784, latent_dim=40, hidden=300, categories=20)
    data = (torch.rand(512, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    schedule = GeneratorSchedule(iterations=4, batch_size=128, replay_batch_size=128, aggregate_samples=256)
    finals = []
    for progress in (None, _SwitchThreads(after=2, threads=2)):
        torch.manual_seed(0)
        generator = ReplayGenerator(build_model(config), model)
        state = GeneratorState(make_adam(generator.parameters()))
        train_generator(generator, None, data, 1, state, replace(schedule, iterations=1), progress=None)
        previous = generator.frozen_copy()
        train_generator(generator, previous, data, 2, state, schedule, progress=progress)
        torch.set_num_threads(1)
        finals.append(generator.state_dict())
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_pooled_threads_leave_a_run_the_same(tmp_path):
    """With ``pool_threads`` the worker takes two threads while the main process waits for it; accuracies and
    q(c) stay the same and every weight agrees to float32 rounding (bit for bit on some CPUs; on an Intel
    Xeon the two-thread kernels round some weights differently, by up to about 6e-8)."""
    g = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(6, 784, generator=g) > 0.5).float()
    y = torch.arange(6).repeat_interleave(64)
    x = (prototypes[y] * 0.8 + 0.1 + 0.1 * torch.randn(len(y), 784, generator=g)).clamp(0, 1)
    stream = stream_from_tensors("synthetic", x, y, x[::4], y[::4], [[0, 1], [2, 3], [4, 5]])
    runs = {}
    for pool in (False, True):
        cl = tiny_cl_config(tmp_path / str(pool), iterations=6, batch_size=128, replay_batch_size=128, fc_units=400,
                            replay_labels="soft", parallel_generator=True, pool_threads=pool,
                            pool_classifier_threads=False)
        runs[pool] = run_experiment(cl, ModelConfig(model="cpvae", input_dim=784, latent_dim=40, hidden=300, categories=8),
                                    stream=stream, echo=lambda *_: None)
        assert torch.get_num_threads() == 1  # the run hands the main process's threads back
    assert runs[True]["accuracy_matrix"] == runs[False]["accuracy_matrix"]
    assert [s.get("q_c") for s in runs[True]["generator_stats"]] == [s.get("q_c") for s in runs[False]["generator_stats"]]
    assert all(s["worker_threads"][0] == [0, 1] for s in runs[True]["generator_stats"] if s["iterations"])
    checkpoints = [torch.load(tmp_path / str(pool) / "run" / "checkpoint.pt") for pool in (False, True)]
    for part in ("classifier", "generator"):
        for name, weight in checkpoints[0][part].items():
            other = checkpoints[1][part][name]
            assert torch.allclose(weight, other, rtol=0, atol=1e-6) if weight.is_floating_point() else torch.equal(weight, other), name


def test_classifier_takes_the_idle_workers_threads_in_the_last_experience_only(tmp_path):
    """With ``pool_classifier_threads`` the classifier trains on both threads in the last experience
    (the worker has no generator to train then) and on its own one before; the run up to the last
    experience is the same bit for bit as without it, and the main process gets its thread back."""
    stream = synthetic_stream(3)
    runs = {}
    for pool in (False, True):
        cl = tiny_cl_config(tmp_path / str(pool), iterations=6, parallel_generator=True, pool_classifier_threads=pool)
        runs[pool] = run_experiment(cl, tiny_model_config(), stream=stream, echo=lambda *_: None)
        assert torch.get_num_threads() == 1
    assert [t["classifier_threads"] for t in runs[True]["timing"]] == [1, 1, 2]
    assert [t["classifier_threads"] for t in runs[False]["timing"]] == [1, 1, 1]
    assert runs[True]["accuracy_matrix"][:2] == runs[False]["accuracy_matrix"][:2]


def test_generator_batches_can_differ_from_the_classifiers(tmp_path):
    """``gen_batch_size`` / ``gen_replay_batch_size`` set the generator's rows per step (current and
    rehearsed from its previous copy) without touching the classifier's 16 + 16."""
    stream = synthetic_stream(3)
    shapes = []
    cl = tiny_cl_config(tmp_path, iterations=6, gen_batch_size=12, gen_replay_batch_size=8)
    results = run_experiment(cl, tiny_model_config(), stream=stream, echo=lambda *_: None,
                             batch_hook=lambda x, r: shapes.append((x.shape[0], None if r is None else r.shape[0])))
    assert shapes == [(12, None)] * 6 + [(12, 8)] * 6
    assert [s["replay_samples"] for s in results["generator_stats"][:2]] == [0, 6 * 8]
    assert results["config"]["replay_batch_size"] == 16 and results["config"]["gen_replay_batch_size"] == 8
