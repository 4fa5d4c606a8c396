"""The replay strategy: an Avalanche ``SupervisedTemplate`` whose classifier trains on every batch of
current data plus a batch of replay, and whose replay source learns after each experience.

Per classifier iteration in experience t (1-based): ``train_mb_size`` current examples and, for
t > 1, ``replay_mb_size`` replayed ones, one forward pass over both, and the loss

    L = (1/t) * L_current + (1 - 1/t) * L_replay                (van de Ven & Tolias 2019)

* Class-incremental (``scenario='class'``): one head; as in van de Ven's protocol the softmaxes of
  L_current and L_replay span the classes seen so far ("active classes"); replay targets come
  from the previous classifier's outputs for the classes seen before experience t (the current
  classes get target 0); at test time every output competes.
* Task-incremental (``scenario='task'``): one head whose logits are masked to the classes of the
  example's task (equivalent to a multi-headed output layer). Generated replay carries no task
  label: as van de Ven does, every replayed sample is labelled for each previous task (its
  logits masked to that task's classes) and L_replay averages the per-task losses.

Labels of generated replay come from the classifier frozen at the end of experience t-1 (never
from the current one): ``hard`` = its arg-max over the relevant classes; ``soft`` = its softmax at
temperature T (default 2) as distillation targets, L_replay = T^2 * cross-entropy(targets,
softmax(logits / T)), which has the gradient of the KL divergence (van de Ven's ``loss_fn_kd``).

Replay sources (``ReplaySource``): ``NoReplay`` (fine-tuning, and the joint upper bound trained on
the union), ``BufferReplay`` (exact replay of a class-balanced memory of ``per_class`` stored
examples per class, with their true labels when ``hard``) and ``GeneratorReplay`` (a generative
model trained after each experience on the experience plus its own replay; see ``generators``).

Data never goes through a DataLoader in the hot loop: each experience's tensors stay in memory
(looked up from the stream, or extracted once) and minibatches are tensor slices of a reshuffled
permutation, exactly ``iterations`` of them per experience (one Avalanche "epoch").
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avalanche.training.templates import SupervisedTemplate

from .generators import (
    GeneratorReplaySampler,
    GeneratorSchedule,
    GeneratorState,
    ReplayGenerator,
    make_adam,
    train_generator,
)
from .streams import ExperienceTensors, extract_tensors

__all__ = [
    "BufferReplay",
    "GeneratorReplay",
    "MLPClassifier",
    "NoReplay",
    "ReplayBatch",
    "ReplaySource",
    "ReplayStrategy",
    "TensorBatches",
]

MASK = -1e9  # added to the logits of inactive classes (finite, so 0 * masked log-prob stays 0)


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


@dataclass
class ReplayBatch:
    """One batch of replay: inputs, and per head (bias added to the logits, target) pairs; a target
    is a class index tensor (hard) or a probability matrix (soft)."""

    x: torch.Tensor
    heads: list[tuple[torch.Tensor, torch.Tensor]]
    stored_labels: torch.Tensor | None = None


class ReplaySource:
    """What the strategy replays. Subclasses: ``NoReplay``, ``BufferReplay``, ``GeneratorReplay``."""

    name = "replay"
    labels_from_memory = False  # True: sample() returns stored (y, t)

    def active(self, t: int) -> bool:
        """Whether experience t (1-based) gets replay."""
        return False

    def before_experience(self, strategy: ReplayStrategy, t: int) -> None:
        """Called before the classifier trains on experience t (before its data is loaded)."""

    def start_experience(self, strategy: ReplayStrategy, data: ExperienceTensors, t: int) -> None:
        """Called once experience t's data is known, before the classifier's loop."""

    def poll_progress(self, progress) -> None:
        """Advance the progress bar by work done elsewhere (a worker process)."""

    def close(self) -> None:
        """Release resources (worker processes)."""

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """n replayed inputs, with stored labels and task labels if the source keeps them."""
        raise NotImplementedError

    def after_experience(self, strategy: ReplayStrategy, data: ExperienceTensors, t: int) -> dict:
        """Called after the classifier trained on experience t; returns statistics to record."""
        return {}

    def sample_grid(self, n: int = 100) -> torch.Tensor | None:
        """Images of what will be replayed next (for the per-experience sample grids)."""
        return None

    def extra_iterations(self) -> int:
        """Iterations per experience this source runs besides the classifier's (progress bar)."""
        return 0


class NoReplay(ReplaySource):
    """No replay at all: fine-tuning (``none``), and the classifier of the ``joint`` bound."""

    name = "none"


class BufferReplay(ReplaySource):
    """Exact replay from a class-balanced memory: after each experience, ``per_class`` random
    training examples of each of its classes are stored (the memory grows by ``per_class`` per
    class and is never rewritten). Replay batches are drawn uniformly from the memory."""

    name = "buffer"
    labels_from_memory = True

    def __init__(self, per_class: int = 100, rng: torch.Generator | None = None) -> None:
        self.per_class = per_class
        self.memory: ExperienceTensors | None = None
        self.rng = rng

    def active(self, t: int) -> bool:
        return self.memory is not None and len(self.memory) > 0

    def sample(self, n: int):
        m = self.memory
        idx = torch.randint(len(m), (n,), generator=self.rng).to(m.x.device)
        return m.x[idx], m.y[idx], m.t[idx]

    def after_experience(self, strategy, data, t):
        keep = []
        for c in data.y.unique().tolist():
            idx = (data.y == c).nonzero().flatten().cpu()
            keep.append(idx[torch.randperm(len(idx), generator=self.rng)[: self.per_class]])
        idx = torch.cat(keep).to(data.x.device)
        new = ExperienceTensors(data.x[idx], data.y[idx], data.t[idx])
        self.memory = new if self.memory is None else ExperienceTensors.cat([self.memory, new])
        return {"memory_size": len(self.memory)}

    def sample_grid(self, n: int = 100):
        if self.memory is None:
            return None
        idx = torch.randperm(len(self.memory), generator=self.rng)[:n].to(self.memory.x.device)
        order = torch.argsort(self.memory.y[idx], stable=True)
        return self.memory.x[idx][order]


class GeneratorReplay(ReplaySource):
    """Generative replay: ``generator`` is trained after each experience on the experience plus
    replay of its own frozen copy from the previous experience; the classifier's replay in
    experience t comes from the copy frozen at the end of t-1 (categories ∝ its q(c)).

    With a ``worker`` (``strategies.worker.GeneratorWorker``) the generator's training for
    experience t runs in that process while the classifier trains on t (both only need the copy
    frozen at the end of t-1); ``after_experience`` waits for it and loads the new weights.
    """

    name = "generator"

    def __init__(self, generator: ReplayGenerator, schedule: GeneratorSchedule, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), writer=None, batch_hook=None, worker=None) -> None:
        self.generator = generator
        self.schedule = schedule
        self.worker = worker
        self.state = None if worker is not None else GeneratorState(make_adam(generator.parameters(), lr=lr, betas=betas))
        self.previous: ReplayGenerator | None = None
        self.sampler: GeneratorReplaySampler | None = None
        self.writer = writer
        self.batch_hook = batch_hook
        self.trained = False
        self._progress_seen = 0

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.generator.name

    def active(self, t: int) -> bool:
        return self.trained and t > 1

    def before_experience(self, strategy, t):
        if self.active(t):
            self.previous = self.generator.frozen_copy()
            self.sampler = GeneratorReplaySampler(self.previous, strategy.iterations * strategy.replay_mb_size)

    def start_experience(self, strategy, data, t):
        if self.worker is not None:
            self.worker.submit(data.x, t, self.schedule)

    def poll_progress(self, progress):
        if self.worker is not None and progress is not None:
            count = self.worker.progress_count()
            if count > self._progress_seen:
                progress.update(count - self._progress_seen)
                self._progress_seen = count

    def sample(self, n):
        return self.sampler.sample(n), None, None

    def after_experience(self, strategy, data, t):
        if self.worker is None:
            stats = train_generator(
                self.generator, self.previous if t > 1 else None, data.x, t, self.state, self.schedule,
                progress=strategy.progress, writer=self.writer, batch_hook=self.batch_hook,
            )
        else:
            wait = time.perf_counter()
            state_dict, stats, records = self.worker.result()
            stats["main_wait_s"] = time.perf_counter() - wait
            self.generator.load_state_dict(state_dict)
            self.poll_progress(strategy.progress)
            if self.writer is not None:
                for tag, value, step in records:
                    self.writer.add_scalar(tag, value, step)
        self.trained = True
        if self.sampler is not None and self.sampler.schedule is not None:
            stats["classifier_replay_category_counts"] = self.sampler.schedule.drawn.tolist()
        return stats

    def sample_grid(self, n: int = 100):
        return self.generator.sample_grid(n) if self.trained else None

    def extra_iterations(self) -> int:
        return self.schedule.iterations

    def close(self):
        if self.worker is not None:
            self.worker.close()


class ReplayStrategy(SupervisedTemplate):
    """Classifier training with replay (see the module docstring).

    :param model: the classifier (outputs logits over all ``num_classes`` classes).
    :param replay: the replay source.
    :param scenario: ``class`` or ``task``.
    :param task_classes: the classes of each task (experience), needed for ``task``.
    :param iterations: classifier iterations per experience.
    :param replay_labels: ``hard`` or ``soft`` (distillation at ``distill_temperature``).
    :param tensor_source: ``dataset -> ExperienceTensors | None`` (e.g. ``ContinualStream.tensors``);
        datasets it does not know are read once through a DataLoader.
    :param progress: a tqdm bar advanced once per classifier / generator iteration.
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
        eval_mb_size: int = 1000,
        replay_labels: str = "hard",
        distill_temperature: float = 2.0,
        tensor_source=None,
        progress=None,
        device: str | torch.device = "cpu",
        plugins=None,
        evaluator=None,
    ) -> None:
        if scenario not in ("class", "task"):
            raise ValueError(f"scenario must be 'class' or 'task', got {scenario!r}")
        if replay_labels not in ("hard", "soft"):
            raise ValueError(f"replay_labels must be 'hard' or 'soft', got {replay_labels!r}")
        if scenario == "task" and not task_classes:
            raise ValueError("the task-incremental scenario needs task_classes")
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(
            model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=train_mb_size,
            train_epochs=1, eval_mb_size=eval_mb_size, device=device, plugins=plugins, eval_every=-1, **kwargs,
        )
        self.replay = replay or NoReplay()
        self.num_classes = num_classes
        self.scenario = scenario
        self.iterations = iterations
        self.replay_mb_size = replay_mb_size
        self.replay_labels = replay_labels
        self.distill_temperature = distill_temperature
        self.tensor_source = tensor_source
        self.progress = progress
        self.previous_model: nn.Module | None = None
        self.last_replay: ReplayBatch | None = None
        self.timing: list[dict] = []
        self.replay_stats: list[dict] = []
        self.t = 0  # 1-based index of the experience being (or last) trained
        dev = torch.device(device)
        self._seen = torch.zeros(num_classes, dtype=torch.bool, device=dev)
        self._seen_before = torch.zeros(num_classes, dtype=torch.bool, device=dev)
        self._task_bias = None
        self._class_to_task = None
        if scenario == "task":
            table = torch.full((len(task_classes), num_classes), MASK, device=dev)
            class_to_task = torch.zeros(num_classes, dtype=torch.long, device=dev)
            for k, classes in enumerate(task_classes):
                table[k, classes] = 0.0
                class_to_task[classes] = k
            self._task_bias, self._class_to_task = table, class_to_task
        self._tasks_seen: list[int] = []
        self._tasks_seen_before: list[int] = []
        self._tensor_cache: dict[int, tuple[object, ExperienceTensors]] = {}
        self._replay_batch: ReplayBatch | None = None
        self._replay_output: torch.Tensor | None = None
        self._replay_active = False
        self._loop_start = 0.0

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
        self.current_data = data
        self.dataloader = TensorBatches(data, self.train_mb_size, self.iterations)

    def make_eval_dataloader(self, **kwargs):
        self.dataloader = _eval_batches(self.experience_tensors(self.experience.dataset), self.eval_mb_size)

    # ------------------------------------------------------------------ experience hooks
    def _before_training_exp(self, **kwargs):
        self.t += 1
        classes = torch.as_tensor(sorted(self.experience.classes_in_this_experience), device=self.device)
        self._seen_before = self._seen.clone()
        self._seen[classes] = True
        if self.scenario == "task":
            self._tasks_seen_before = sorted(set(self._tasks_seen))
            self._tasks_seen = sorted(set(self._tasks_seen) | set(self._class_to_task[classes].tolist()))
        self._replay_active = self.replay.active(self.t)
        if self._replay_active:
            self.previous_model = copy.deepcopy(self.model).eval()
            for p in self.previous_model.parameters():
                p.requires_grad_(False)
        self.replay.before_experience(self, self.t)
        super()._before_training_exp(**kwargs)
        self.replay.start_experience(self, self.current_data, self.t)

    def _before_training_epoch(self, **kwargs):
        super()._before_training_epoch(**kwargs)
        self._loop_start = time.perf_counter()

    def _after_training_epoch(self, **kwargs):
        wall = time.perf_counter() - self._loop_start
        self.timing.append({"experience": self.t, "classifier_iterations": self.iterations,
                            "classifier_wall_time_s": wall,
                            "classifier_ms_per_iteration": 1000.0 * wall / max(1, self.iterations)})
        super()._after_training_epoch(**kwargs)

    def _after_training_iteration(self, **kwargs):
        if self.progress is not None:
            self.progress.update(1)
            if self.clock.train_epoch_iterations % 100 == 0:
                self.replay.poll_progress(self.progress)
        super()._after_training_iteration(**kwargs)

    def _after_training_exp(self, **kwargs):
        stats = self.replay.after_experience(self, self.current_data, self.t)
        self.replay_stats.append(stats)
        if stats.get("wall_time_s") is not None and self.timing:
            self.timing[-1]["generator_wall_time_s"] = stats["wall_time_s"]
            self.timing[-1]["generator_ms_per_iteration"] = stats["ms_per_iteration"]
            if "main_wait_s" in stats:
                self.timing[-1]["waited_for_generator_s"] = stats["main_wait_s"]
        self._replay_batch = self._replay_output = None
        super()._after_training_exp(**kwargs)

    # ------------------------------------------------------------------ replay
    def _targets(self, logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self.replay_labels == "hard":
            return (logits + bias).argmax(dim=1)
        return F.softmax((logits + bias) / self.distill_temperature, dim=1)

    @torch.no_grad()
    def draw_replay(self, n: int) -> ReplayBatch:
        """n replayed inputs with their targets (labels from the frozen previous classifier)."""
        x, y_stored, t_stored = self.replay.sample(n)
        use_stored = self.replay.labels_from_memory and self.replay_labels == "hard"
        prev_logits = None if use_stored else self.previous_model(x)
        if self.scenario == "class":
            # Targets over the classes seen before; the loss over every active class (the current
            # ones get target 0), so replayed old data is also told apart from the new classes.
            old = torch.where(self._seen_before, 0.0, MASK).unsqueeze(0)
            active = torch.where(self._seen, 0.0, MASK).unsqueeze(0)
            heads = [(active, y_stored if use_stored else self._targets(prev_logits, old))]
        elif t_stored is not None:  # stored task labels: one head per sample
            bias = self._task_bias[t_stored]
            heads = [(bias, y_stored if use_stored else self._targets(prev_logits, bias))]
        else:  # generated replay in task-IL: labelled for every previous task
            heads = []
            for k in self._tasks_seen_before:
                bias = self._task_bias[k].unsqueeze(0)
                heads.append((bias, self._targets(prev_logits, bias)))
        return ReplayBatch(x, heads, y_stored)

    def _replay_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dtype == torch.long:
            return F.cross_entropy(logits, target)
        temperature = self.distill_temperature
        log_p = F.log_softmax(logits / temperature, dim=1)
        return -(target * log_p).sum(dim=1).mean() * temperature**2

    def _current_bias(self, y: torch.Tensor) -> torch.Tensor:
        if self.scenario == "task":
            return self._task_bias[self._class_to_task[y]]
        return torch.where(self._seen, 0.0, MASK).unsqueeze(0)

    # ------------------------------------------------------------------ forward / loss
    def forward(self):
        x = self.mb_x
        if not self.is_training:
            out = self.model(x)
            if self.scenario == "task":
                out = out + self._task_bias[self.mb_task_id]
            return out
        if not self._replay_active:
            self._replay_batch = None
            return self.model(x)
        self._replay_batch = self.last_replay = self.draw_replay(self.replay_mb_size)
        out = self.model(torch.cat([x, self._replay_batch.x]))
        n = x.shape[0]
        self._replay_output = out[n:]
        return out[:n]

    def criterion(self):
        if not self.is_training:
            return F.cross_entropy(self.mb_output, self.mb_y)
        current = F.cross_entropy(self.mb_output + self._current_bias(self.mb_y), self.mb_y)
        if self._replay_batch is None:
            return current
        heads = self._replay_batch.heads
        replay = sum(self._replay_loss(self._replay_output + bias, target) for bias, target in heads) / len(heads)
        w = 1.0 / self.t
        return w * current + (1.0 - w) * replay

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
                logits = logits + self._task_bias[t[i : i + batch_size].to(self.device)]
            out.append(logits.argmax(1))
        self.model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
