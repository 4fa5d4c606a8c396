"""The replay strategy: an Avalanche ``SupervisedTemplate`` whose classifier trains on every batch of
current data plus a batch of replay, through ``plugin.ReplayPlugin`` (the one implementation of
replay, also usable with any other Avalanche template).

Per classifier iteration in experience t (1-based): ``train_mb_size`` current examples and, for
t > 1, ``replay_mb_size`` replayed ones, one forward pass over both, and the loss

    L = (1/t) * L_current + (1 - 1/t) * L_replay                (van de Ven & Tolias 2019)

The plugin draws and labels the replay and weights the losses (see ``plugin`` for the replay
targets, hard or soft, and the masks of the two scenarios). This template adds van de Ven's
protocol around it:

* Class-incremental (``scenario='class'``): the softmax of L_current spans the classes seen so far
  ("active classes"); at test time every output competes.
* Task-incremental (``scenario='task'``): one head whose logits are masked to the classes of the
  example's task (equivalent to a multi-headed output layer), in training and at test time.

Replay sources (``sources``): ``NoReplay`` (fine-tuning, and the joint upper bound trained on the
union), ``BufferReplay`` and ``GeneratorReplay``.

Data never goes through a DataLoader in the hot loop: each experience's tensors stay in memory
(looked up from the stream, or extracted once) and minibatches are tensor slices of a reshuffled
permutation, exactly ``iterations`` of them per experience (one Avalanche "epoch").
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from avalanche.training.templates import SupervisedTemplate

from cl_replay.divergence import loss_is_finite

from .config import REPLAY_CHUNK
from .plugin import ReplayBatch, ReplayPlugin
from .sources import NoReplay, ReplaySource
from .streams import ExperienceTensors, extract_tensors

__all__ = [
    "MLPClassifier",
    "ReplayStrategy",
    "TensorBatches",
]


class MLPClassifier(nn.Module):
    """The classifier of van de Ven & Tolias (2019): ``layers`` fully connected ReLU layers of
    ``units`` units (784-400-400-C by default), then a linear output over all classes."""

    def __init__(self, input_dim: int = 784, num_classes: int = 10, units: int = 400, layers: int = 2) -> None:
        super().__init__()
        sizes = [input_dim] + [units] * layers
        body: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            body += [nn.Linear(a, b), nn.ReLU()]
        self.features = nn.Sequential(*body)
        self.classifier = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.flatten(1)))


class TensorBatches:
    """Exactly ``iterations`` minibatches ``[x, y, t]`` of ``batch_size`` drawn from in-memory tensors,
    cycling through fresh random permutations (every example once per pass)."""

    def __init__(self, data: ExperienceTensors, batch_size: int, iterations: int, shuffle: bool = True) -> None:
        self.data, self.batch_size, self.iterations, self.shuffle = data, batch_size, iterations, shuffle

    def __len__(self) -> int:
        return self.iterations

    def __iter__(self):
        n = len(self.data)
        size = min(self.batch_size, n)
        device = self.data.x.device
        order, position = None, n
        for _ in range(self.iterations):
            if position + size > n:
                order = torch.randperm(n, device=device) if self.shuffle else torch.arange(n, device=device)
                position = 0
            idx = order[position : position + size]
            position += size
            yield [self.data.x[idx], self.data.y[idx], self.data.t[idx]]


def _eval_batches(data: ExperienceTensors, batch_size: int) -> list:
    return [[data.x[i : i + batch_size], data.y[i : i + batch_size], data.t[i : i + batch_size]]
            for i in range(0, len(data), batch_size)]


class ReplayStrategy(SupervisedTemplate):
    """Classifier training with replay (see the module docstring).

    :param model: the classifier (outputs logits over all ``num_classes`` classes).
    :param replay: the replay source.
    :param scenario: ``class`` or ``task``.
    :param task_classes: the classes of each task (experience), needed for ``task``.
    :param iterations: classifier iterations per experience.
    :param replay_chunk: replay batches drawn and labelled at once (see ``ReplayPlugin``).
    :param replay_labels: ``hard`` or ``soft`` (distillation at ``distill_temperature``).
    :param current_weight: the weight of the current experience's loss (None: 1/t; see ``ReplayPlugin``).
    :param tensor_source: ``dataset -> ExperienceTensors | None`` (e.g. ``ContinualStream.tensors``);
        datasets it does not know are read once through a DataLoader.
    :param progress: a tqdm bar advanced once per classifier / generator iteration.
    :param on_nan: a non-finite loss ``stop`` s training (``DivergenceError``) or its update is ``skip`` ped.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        replay: ReplaySource | None = None,
        num_classes: int,
        scenario: str = "class",
        task_classes: list[list[int]] | None = None,
        iterations: int = 2000,
        train_mb_size: int = 128,
        replay_mb_size: int = 128,
        replay_chunk: int = REPLAY_CHUNK,
        eval_mb_size: int = 1000,
        replay_labels: str = "hard",
        distill_temperature: float = 2.0,
        current_weight: float | None = None,
        tensor_source=None,
        progress=None,
        device: str | torch.device = "cpu",
        plugins=None,
        evaluator=None,
        on_nan: str = "stop",
    ) -> None:
        replay_plugin = ReplayPlugin(
            replay or NoReplay(), num_classes=num_classes, scenario=scenario, task_classes=task_classes,
            replay_mb_size=replay_mb_size, replay_chunk=replay_chunk, replay_labels=replay_labels,
            distill_temperature=distill_temperature, current_weight=current_weight,
            tensor_source=self.experience_tensors, device=device,
        )
        replay_plugin.progress = progress
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(
            model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=train_mb_size,
            train_epochs=1, eval_mb_size=eval_mb_size, device=device, plugins=[replay_plugin, *(plugins or [])],
            eval_every=-1, **kwargs,
        )
        self.replay_plugin = replay_plugin
        self.replay = replay_plugin.source
        self.labels = replay_plugin.labels
        self.scenario = scenario
        self.iterations = iterations
        self.tensor_source = tensor_source
        self.progress = progress
        self.timing: list[dict] = []
        self.on_nan = on_nan
        self.skipped_steps = 0
        self._tensor_cache: dict[int, tuple[object, ExperienceTensors]] = {}
        self._loop_start = 0.0

    @property
    def t(self) -> int:
        """1-based index of the experience being (or last) trained."""
        return self.replay_plugin.t

    @property
    def previous_model(self) -> nn.Module | None:
        """The classifier frozen at the end of the previous experience (labels the replay)."""
        return self.replay_plugin.previous_model

    @property
    def last_replay(self) -> ReplayBatch | None:
        """The latest replay batch."""
        return self.replay_plugin.last_replay

    @property
    def replay_stats(self) -> list[dict]:
        """Statistics of the replay source after each experience (generator losses, q(c), ...)."""
        return self.replay_plugin.stats

    # ------------------------------------------------------------------ data
    def experience_tensors(self, dataset) -> ExperienceTensors:
        """The tensors of an experience dataset, on the strategy's device."""
        found = self.tensor_source(dataset) if self.tensor_source is not None else None
        if found is None:
            key = id(dataset)
            if key not in self._tensor_cache:
                self._tensor_cache[key] = (dataset, extract_tensors(dataset).to(self.device))
            found = self._tensor_cache[key][1]
        return found.to(self.device)

    def make_train_dataloader(self, **kwargs):
        own = self.experience.dataset
        if self.adapted_dataset is not None and len(self.adapted_dataset) != len(own):
            data = self.experience_tensors(self.adapted_dataset)  # a plugin changed the data
        else:
            data = self.experience_tensors(own)
        self.dataloader = TensorBatches(data, self.train_mb_size, self.iterations)

    def make_eval_dataloader(self, **kwargs):
        self.dataloader = _eval_batches(self.experience_tensors(self.experience.dataset), self.eval_mb_size)

    # ------------------------------------------------------------------ timing and progress
    def _before_training_epoch(self, **kwargs):
        super()._before_training_epoch(**kwargs)
        self._loop_start = time.perf_counter()
        self.skipped_steps = 0

    def _after_training_epoch(self, **kwargs):
        wall = time.perf_counter() - self._loop_start
        self.timing.append({"experience": self.t, "classifier_iterations": self.iterations,
                            "classifier_wall_time_s": wall,
                            "classifier_ms_per_iteration": 1000.0 * wall / max(1, self.iterations),
                            "classifier_threads": torch.get_num_threads(),
                            "classifier_skipped_steps": self.skipped_steps})
        super()._after_training_epoch(**kwargs)

    def _after_training_iteration(self, **kwargs):
        if self.progress is not None:
            self.progress.update(1)
            if self.clock.train_epoch_iterations % 100 == 0:
                self.replay.poll_progress(self.progress)
        super()._after_training_iteration(**kwargs)

    def _after_training_exp(self, **kwargs):
        super()._after_training_exp(**kwargs)  # the replay plugin trains the generator here
        stats = self.replay_stats[-1]
        if "iterations" in stats and self.timing:  # a generator: 0 iterations when it was not trained
            self.timing[-1]["generator_iterations"] = stats["iterations"]
        if stats.get("wall_time_s") is not None and self.timing:
            self.timing[-1]["generator_wall_time_s"] = stats["wall_time_s"]
            self.timing[-1]["generator_ms_per_iteration"] = stats["ms_per_iteration"]
            if "main_wait_s" in stats:
                self.timing[-1]["waited_for_generator_s"] = stats["main_wait_s"]

    # ------------------------------------------------------------------ forward / loss
    def forward(self):
        x = self.mb_x
        if not self.is_training:
            out = self.model(x)
            if self.scenario == "task":
                out = out + self.labels.task_bias[self.mb_task_id]
            return out
        batch = self.replay_plugin.batch
        if batch is None:
            return self.model(x)
        out = self.model(torch.cat([x, batch.x]))  # one pass over current and replayed inputs
        n = x.shape[0]
        self.replay_plugin.replay_logits = out[n:]
        return out[:n]

    def criterion(self):
        """L_current (masked to the active classes or the example's task); the replay plugin then
        weights it with L_replay."""
        if not self.is_training:
            return F.cross_entropy(self.mb_output, self.mb_y)
        return F.cross_entropy(self.mb_output + self.labels.current_bias(self.mb_y), self.mb_y)

    def optimizer_step(self):
        """The update, unless the loss is not finite: then stop (``DivergenceError``) or skip it (``on_nan``)."""
        plugin = self.replay_plugin
        terms = plugin.loss_terms if plugin.batch is not None else {"current": self.loss.detach()}
        where = f"experience {self.t}, classifier iteration {self.clock.train_epoch_iterations + 1}"
        if loss_is_finite(self.loss, terms, where, self.on_nan):
            super().optimizer_step()
        else:
            self.skipped_steps += 1

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> dict:
        """Classifier, optimizer, replay (plugin and source), timings, Avalanche's clock and the
        evaluator's metrics (forgetting needs the accuracies seen so far), as saved after an
        experience for ``load_state_dict`` to continue from."""
        clock = {k: v for k, v in vars(self.clock).items() if isinstance(v, int)}
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "timing": self.timing,
                "replay": self.replay_plugin.state_dict(), "clock": clock, "metrics": self.evaluator.metrics}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        # Avalanche resets the optimizer the first time it sees it; let it do that now, not in train().
        self.make_optimizer(reset_optimizer_state=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.timing = state["timing"]
        self.replay_plugin.load_state_dict(state["replay"])
        vars(self.clock).update(state["clock"])
        self.evaluator.metrics = state["metrics"]

    # ------------------------------------------------------------------ evaluation helpers
    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: torch.Tensor | None = None, batch_size: int = 2000) -> torch.Tensor:
        """Predicted classes (task-IL: among the classes of task ``t``)."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for i in range(0, x.shape[0], batch_size):
            logits = self.model(x[i : i + batch_size].to(self.device))
            if self.scenario == "task" and t is not None:
                logits = logits + self.labels.task_bias[t[i : i + batch_size].to(self.device)]
            out.append(logits.argmax(1))
        self.model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
