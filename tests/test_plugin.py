"""``CPVAEReplayPlugin`` inside Avalanche's own templates: replay beats fine-tuning on ``Naive``,
replays exactly the categories ``ReplayStrategy`` replays for the same q(c), and runs with the
regularisation templates (EWC, LwF) as well.

Tiny synthetic streams (8x8 images, small networks) on the CPU.
"""
from __future__ import annotations

import pytest
import torch

from cl_replay.models import build_model
from strategies.generators import GeneratorSchedule, make_adam
from strategies.plugin import CPVAEReplayPlugin
from strategies.replay import MLPClassifier, ReplayStrategy
from strategies.sources import GeneratorReplay
from test_strategies import DIM, _single_thread_cpu, synthetic_stream, tiny_model_config  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.filterwarnings("ignore:No loggers specified")


def tiny_plugin(num_classes: int, iterations: int = 200, categories: int = 12, **options) -> CPVAEReplayPlugin:
    schedule = GeneratorSchedule(iterations=iterations, batch_size=16, replay_batch_size=16,
                                 temperature_iterations=iterations, aggregate_samples=200)
    generator = build_model(tiny_model_config(categories=categories))
    return CPVAEReplayPlugin(generator, num_classes=num_classes, schedule=schedule, lr=3e-3,
                             replay_mb_size=16, **options)


def avalanche_template(name: str, stream, plugins: list, epochs: int = 4):
    from avalanche.training.supervised import EWC, LwF, Naive

    torch.manual_seed(0)
    model = MLPClassifier(DIM, stream.num_classes, units=32)
    common = dict(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
                  criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=epochs,
                  eval_mb_size=64, plugins=plugins, evaluator=None)
    if name == "ewc":
        return EWC(ewc_lambda=1.0, **common)
    if name == "lwf":
        return LwF(alpha=1.0, temperature=2.0, **common)
    return Naive(**common)


def final_average_accuracy(model: torch.nn.Module, stream) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float((model(d.x).argmax(1) == d.y).float().mean()) for d in stream.test) / len(stream.test)


def test_plugin_on_naive_beats_no_replay():
    stream = synthetic_stream(4)
    finals = {}
    for replay in (False, True):
        torch.manual_seed(0)
        plugins = [tiny_plugin(stream.num_classes, tensor_source=stream.tensors)] if replay else []
        strategy = avalanche_template("naive", stream, plugins)
        for experience in stream.train_stream:
            strategy.train(experience)
        finals[replay] = final_average_accuracy(strategy.model, stream)
    assert finals[False] < 0.4  # fine-tuning keeps the last experience only
    assert finals[True] > finals[False] + 0.3, finals
    plugin = plugins[0]
    assert plugin.t == 4 and [s["experience"] for s in plugin.stats] == [1, 2, 3, 4]
    assert [s["replay_samples"] for s in plugin.stats] == [0, 200 * 16, 200 * 16, 200 * 16]


def test_plugin_ties_categories_to_the_stream_classes_when_asked():
    stream = synthetic_stream(2)
    plugin = CPVAEReplayPlugin(build_model(tiny_model_config(categories=8)), num_classes=stream.num_classes,
                               schedule=GeneratorSchedule(iterations=20, batch_size=16, replay_batch_size=16,
                                                          aggregate_samples=200, label_weight=1.0),
                               replay_mb_size=16, tensor_source=stream.tensors)
    assert plugin.source.schedule.label_classes == stream.num_classes
    strategy = avalanche_template("naive", stream, [plugin], epochs=1)
    for experience in stream.train_stream:
        strategy.train(experience)
    assert all("category_label_nll" in s["final"] for s in plugin.stats)


def test_plugin_ties_categories_to_the_tasks_it_knows_of():
    """The number of tasks comes from task_classes (task-incremental) or stream_length (class-incremental)."""
    stream = synthetic_stream(3, scenario="task")
    schedule = GeneratorSchedule(iterations=20, batch_size=16, replay_batch_size=16, aggregate_samples=200,
                                 label_weight=1.0)
    with pytest.raises(ValueError, match="number"):
        CPVAEReplayPlugin(build_model(tiny_model_config(categories=6)), num_classes=stream.num_classes,
                          schedule=schedule, tie_to="task")
    plugin = CPVAEReplayPlugin(build_model(tiny_model_config(categories=6)), num_classes=stream.num_classes,
                               schedule=schedule, tie_to="task", scenario="task",
                               task_classes=stream.experience_classes, tensor_source=stream.tensors)
    assert plugin.source.schedule.label_classes == 3 and plugin.source.tied_to_tasks
    plugin = CPVAEReplayPlugin(build_model(tiny_model_config(categories=6)), num_classes=stream.num_classes,
                               schedule=schedule, tie_to="task", stream_length=3)
    assert plugin.source.schedule.label_classes == 3 and plugin.source.tied_to_tasks


def test_plugin_and_replay_strategy_replay_the_same_categories_for_a_hand_set_q_c():
    """Experience 2 replays from a generator whose q(c) is set by hand; over the experience both
    loops draw exactly category_counts(iterations * replay batch) of each category."""
    stream = synthetic_stream(2)  # 120 training examples per experience: 8 Naive batches of 16 per epoch
    q = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0])
    iterations = 2 * 8
    counts = {}
    for loop in ("plugin", "strategy"):
        torch.manual_seed(0)
        if loop == "plugin":
            plugin = tiny_plugin(stream.num_classes, iterations=5, categories=5)
            strategy = avalanche_template("naive", stream, [plugin], epochs=2)
            source = plugin.source
        else:
            generator = tiny_plugin(stream.num_classes, iterations=5, categories=5).generator
            source = GeneratorReplay(generator, GeneratorSchedule(iterations=5, batch_size=16, replay_batch_size=16,
                                                                  aggregate_samples=200), lr=3e-3)
            model = MLPClassifier(DIM, stream.num_classes, units=32)
            strategy = ReplayStrategy(model=model, optimizer=make_adam(model.parameters(), lr=1e-2), replay=source,
                                      num_classes=stream.num_classes, iterations=iterations, train_mb_size=16,
                                      replay_mb_size=16, tensor_source=stream.tensors)
        strategy.train(stream.train_stream[0])
        source.generator.model.aggregated_posterior.copy_(q)  # the replay of experience 2 follows this q(c)
        strategy.train(stream.train_stream[1])
        stats = plugin.stats if loop == "plugin" else strategy.replay_stats
        counts[loop] = stats[-1]["classifier_replay_category_counts"]
    expected = (q * iterations * 16).long().tolist()
    assert expected == [128, 64, 32, 32, 0]
    assert counts["plugin"] == counts["strategy"] == expected


@pytest.mark.parametrize("template", ["ewc", "lwf"])
def test_plugin_runs_with_regularisation_templates(template: str):
    stream = synthetic_stream(2)
    plugin = tiny_plugin(stream.num_classes, iterations=10, replay_labels="soft", stream_length=2)
    strategy = avalanche_template(template, stream, [plugin], epochs=1)
    losses = []
    original = plugin.before_backward

    def spy(strategy, *args, **kwargs):
        before = float(strategy.loss.detach())
        original(strategy, *args, **kwargs)
        losses.append((before, float(strategy.loss.detach())))

    plugin.before_backward = spy
    for experience in stream.train_stream:
        strategy.train(experience)
    assert plugin.last_replay is not None and plugin.last_replay.heads[0][1].dtype == torch.float32  # soft
    assert len(losses) == 16
    assert all(after == before for before, after in losses[:8])  # experience 1: nothing to replay
    assert all(after != before for before, after in losses[8:])  # experience 2: (L + L_replay) / 2
    assert [s["iterations"] for s in plugin.stats] == [10, 0]  # a stream of 2: nothing replays after the last


@pytest.mark.parametrize("current_weight", [None, 0.8])
def test_the_current_loss_weighs_one_over_t_or_the_weight_given(current_weight):
    """L = w * L_current + (1 - w) * L_replay in experiences 2 and 3, w = 1/t unless given."""
    stream = synthetic_stream(3)
    plugin = tiny_plugin(stream.num_classes, iterations=5, current_weight=current_weight, stream_length=3)
    strategy = avalanche_template("naive", stream, [plugin], epochs=1)
    checked = []
    original = plugin.before_backward

    def spy(strategy, *args, **kwargs):
        original(strategy, *args, **kwargs)
        if plugin.t > 1:
            w = 1.0 / plugin.t if current_weight is None else current_weight
            expected = w * plugin.loss_terms["current"] + (1 - w) * plugin.loss_terms["replay"]
            torch.testing.assert_close(strategy.loss.detach(), expected)
            checked.append(plugin.t)

    plugin.before_backward = spy
    for experience in stream.train_stream:
        strategy.train(experience)
    assert sorted(set(checked)) == [2, 3]


def test_a_current_weight_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="current_weight"):
        tiny_plugin(4, current_weight=1.5)
