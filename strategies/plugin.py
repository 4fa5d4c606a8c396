"""Replay as an Avalanche plugin: ``ReplayPlugin`` brings a replay source (``sources``) to any
Avalanche ``SupervisedTemplate`` (``Naive``, ``EWC``, ``LwF``, ...); ``CPVAEReplayPlugin`` is
the same plugin built around a generative model (CP-VAE replay following q(c)).
``replay.ReplayStrategy`` runs on this plugin too: there is one implementation of replay.

In experience t (1-based) the plugin

* before training: counts t, records the experience's classes, freezes a copy of the classifier
  (the labeller of replay) and hands the experience's data to the source (the generator of t-1
  is frozen; with a worker process the generator of t starts training there);
* every iteration (t > 1): takes ``replay_mb_size`` replayed inputs (a generator draws its
  categories in proportion to q(c) over the experience, see ``CategorySchedule``) labelled by the
  frozen classifier (both done ``replay_chunk`` batches at a time, ``ReplayChunks``), and
  replaces the template's loss L_current by

      L = w * L_current + (1 - w) * L_replay,   w = 1/t           (van de Ven & Tolias 2019)

  or a fixed w = ``current_weight`` (e.g. 0.5: each new task weighs as much as all earlier ones);

  where L_replay is the cross-entropy with the ``hard`` labels (arg-max) or, ``soft``, the
  distillation loss T^2 * cross-entropy(softmax(prev / T), softmax(logits / T)) at temperature T;
* after training: trains the generator on the experience plus its own replay (``train_generator``)
  and, for CP-VAE, refits q(c) over everything learned so far; not after the stream's last
  experience when the source knows the stream's length (nothing would replay from it).

Logit masks (a bias of 0 for allowed classes, ``MASK`` for the others):

* class-incremental (``scenario='class'``): replay targets come from the previous classifier's
  outputs over the classes seen before experience t; L_replay's softmax spans the classes seen so
  far (the current ones get target 0);
* task-incremental (``scenario='task'``, with ``task_classes``): a single-head model whose logits
  are masked to a task's classes. A memory replays each example on its own task's head, and so does
  a generator whose categories are tied to tasks (each sample on the head of the task of its
  category); other generated replay carries no task label, so every replayed sample is labelled for
  each previous task and L_replay averages the per-task losses.

The template's own loss (its criterion, and penalties other plugins add later, e.g. EWC's) is left
as it is apart from the weight w. The replay's forward pass is the plugin's own, unless the
template already computed the replay logits in its forward pass and set ``replay_logits``
(``ReplayStrategy`` does: one pass over current and replayed inputs).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from avalanche.core import SupervisedPlugin

from .config import REPLAY_CHUNK
from .generator_core import GeneratorCore, GeneratorSchedule, ReplayChunks
from .generators import ReplayGenerator
from .sources import GeneratorReplay, ReplaySource
from .streams import ExperienceTensors, extract_tensors

__all__ = ["CPVAEReplayPlugin", "LabelSpace", "MASK", "ReplayBatch", "ReplayPlugin"]

MASK = -1e9  # added to the logits of masked classes (finite, so 0 * masked log-prob stays 0)


@dataclass
class ReplayBatch:
    """One batch of replay: inputs, and per head (bias added to the logits, target) pairs; a target
    is a class index tensor (hard) or a probability matrix (soft)."""

    x: torch.Tensor
    heads: list[tuple[torch.Tensor, torch.Tensor]]
    stored_labels: torch.Tensor | None = None

    def __getitem__(self, rows: slice) -> ReplayBatch:
        """The replay of ``rows`` (biases shared by the whole batch stay whole)."""
        heads = [(bias if bias.shape[0] == 1 else bias[rows], target[rows]) for bias, target in self.heads]
        return ReplayBatch(self.x[rows], heads, None if self.stored_labels is None else self.stored_labels[rows])


class LabelSpace:
    """The classes seen so far and the scenario's logit masks (0 allowed, ``MASK`` masked).

    ``seen`` / ``seen_before``: (C,) classes seen up to and before the current experience;
    ``task_bias``: (tasks, C), row k allowing the classes of task k (task-incremental only);
    ``class_to_task``: (C,) the task of every class.
    """

    def __init__(self, num_classes: int, scenario: str = "class", task_classes: list[list[int]] | None = None,
                 device: str | torch.device = "cpu") -> None:
        if scenario not in ("class", "task"):
            raise ValueError(f"scenario must be 'class' or 'task', got {scenario!r}")
        if scenario == "task" and not task_classes:
            raise ValueError("the task-incremental scenario needs task_classes")
        self.scenario = scenario
        device = torch.device(device)
        self.seen = torch.zeros(num_classes, dtype=torch.bool, device=device)
        self.seen_before = self.seen.clone()
        self.task_bias: torch.Tensor | None = None
        self.class_to_task: torch.Tensor | None = None
        if scenario == "task":
            self.task_bias = torch.full((len(task_classes), num_classes), MASK, device=device)
            self.class_to_task = torch.zeros(num_classes, dtype=torch.long, device=device)
            for k, classes in enumerate(task_classes):
                self.task_bias[k, classes] = 0.0
                self.class_to_task[classes] = k
        self.tasks_seen: list[int] = []
        self.tasks_seen_before: list[int] = []

    def to(self, device: str | torch.device) -> LabelSpace:
        """Move the masks to ``device`` (in place)."""
        for name in ("seen", "seen_before", "task_bias", "class_to_task"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def start_experience(self, classes) -> None:
        """Record the classes of the experience about to be trained."""
        classes = torch.as_tensor(sorted(classes), device=self.seen.device)
        self.seen_before = self.seen.clone()
        self.seen[classes] = True
        if self.scenario == "task":
            self.tasks_seen_before = sorted(set(self.tasks_seen))
            self.tasks_seen = sorted(set(self.tasks_seen) | set(self.class_to_task[classes].tolist()))

    def seen_before_bias(self) -> torch.Tensor:
        """(1, C): the classes seen before the current experience (the replay's labels)."""
        return torch.where(self.seen_before, 0.0, MASK).unsqueeze(0)

    def active_bias(self) -> torch.Tensor:
        """(1, C): the classes seen so far."""
        return torch.where(self.seen, 0.0, MASK).unsqueeze(0)

    def current_bias(self, y: torch.Tensor) -> torch.Tensor:
        """Masks of current examples with labels ``y``: their task's classes, or the classes seen so far."""
        if self.scenario == "task":
            return self.task_bias[self.class_to_task[y]]
        return self.active_bias()


class ReplayPlugin(SupervisedPlugin):
    """Replay from ``source`` inside any Avalanche ``SupervisedTemplate`` (see the module docstring).

    :param source: the replay source (``NoReplay``, ``BufferReplay``, ``GeneratorReplay``).
    :param num_classes: outputs of the classifier (all classes of the stream).
    :param scenario: ``class`` or ``task`` (then ``task_classes``: the classes of each task).
    :param replay_mb_size: replayed inputs per training iteration.
    :param replay_chunk: replay batches drawn and labelled at once, then served one per iteration
        (``generator_core.ReplayChunks``).
    :param replay_labels: ``hard`` or ``soft`` (distillation at ``distill_temperature``).
    :param current_weight: the weight w of the current experience's loss, in (0, 1]; None (the
        default) is 1/t.
    :param tensor_source: ``dataset -> ExperienceTensors | None`` giving an experience's data as
        tensors; by default (or when it returns None) the dataset is read once with a DataLoader.
    """

    def __init__(
        self,
        source: ReplaySource,
        *,
        num_classes: int,
        scenario: str = "class",
        task_classes: list[list[int]] | None = None,
        replay_mb_size: int = 128,
        replay_chunk: int = REPLAY_CHUNK,
        replay_labels: str = "hard",
        distill_temperature: float = 2.0,
        current_weight: float | None = None,
        tensor_source: Callable[[object], ExperienceTensors | None] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if replay_labels not in ("hard", "soft"):
            raise ValueError(f"replay_labels must be 'hard' or 'soft', got {replay_labels!r}")
        if current_weight is not None and not 0.0 < current_weight <= 1.0:
            raise ValueError(f"current_weight must be in (0, 1] (or None for 1/t), got {current_weight}")
        self.current_weight = current_weight
        self.source = source
        self.labels = LabelSpace(num_classes, scenario, task_classes, device)
        self.replay_mb_size = replay_mb_size
        self.replay_chunk = replay_chunk
        self.replay_total = 0  # replayed inputs the current experience will use
        self.replay_batches: ReplayChunks | None = None  # the current experience's replay, drawn ahead
        self.replay_labels = replay_labels
        self.distill_temperature = distill_temperature
        self.tensor_source = tensor_source
        self.progress = None  # a tqdm bar the generator's training advances
        self.t = 0  # 1-based index of the experience being (or last) trained
        self.active = False
        self.previous_model: nn.Module | None = None
        self.current_data: ExperienceTensors | None = None
        self.batch: ReplayBatch | None = None  # replay of the current iteration
        self.replay_logits: torch.Tensor | None = None  # set by a template that forwarded the replay itself
        self.last_replay: ReplayBatch | None = None
        self.loss_terms: dict[str, torch.Tensor] = {}  # current and replay loss of the latest replay iteration
        self.stats: list[dict] = []

    # ------------------------------------------------------------------ experience
    def experience_data(self, strategy) -> ExperienceTensors:
        """The training data of the current experience as tensors on the strategy's device."""
        dataset = strategy.experience.dataset
        found = self.tensor_source(dataset) if self.tensor_source is not None else None
        return (found if found is not None else extract_tensors(dataset)).to(strategy.device)

    def before_training_exp(self, strategy, *args, **kwargs):
        self.t += 1
        self.labels.to(strategy.device).start_experience(strategy.experience.classes_in_this_experience)
        self.active = self.source.active(self.t)
        if self.active:
            self.previous_model = copy.deepcopy(strategy.model).eval()
            for p in self.previous_model.parameters():
                p.requires_grad_(False)
        self.current_data = self.experience_data(strategy)
        iterations = len(strategy.dataloader) * strategy.train_epochs
        self.replay_total = iterations * self.replay_mb_size
        self.replay_batches = None
        replay_classes = self.labels.seen_before.nonzero().flatten().tolist()
        self.source.begin_experience(self.current_data, self.t, self.replay_total,
                                     classify=self.classify_replay if self.active else None,
                                     replay_classes=replay_classes)

    def after_training_exp(self, strategy, *args, **kwargs):
        self.stats.append(self.source.end_experience(self.current_data, self.t, self.progress))
        self.batch = self.replay_logits = self.current_data = self.replay_batches = None

    def state_dict(self) -> dict:
        """Experiences done, classes seen, statistics and the source's state: with the classifier, what
        a resumed run needs (the frozen classifier of the next experience is a copy made when it starts)."""
        labels = {name: getattr(self.labels, name) for name in ("seen", "seen_before", "tasks_seen", "tasks_seen_before")}
        return {"t": self.t, "labels": labels, "stats": self.stats, "source": self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.t, self.stats = state["t"], state["stats"]
        for name, value in state["labels"].items():
            setattr(self.labels, name, value)
        self.source.load_state_dict(state["source"])

    # ------------------------------------------------------------------ iterations
    def before_forward(self, strategy, *args, **kwargs):
        self.replay_logits = None
        self.batch = None
        if self.active:
            if self.replay_batches is None:
                shape = strategy.mb_x.shape[1:]
                self.replay_batches = ReplayChunks(lambda m: self.draw_replay(m, shape), self.replay_mb_size,
                                                   self.replay_chunk, self.replay_total)
            self.batch = self.last_replay = self.replay_batches.next()

    def before_backward(self, strategy, *args, **kwargs):
        if self.batch is None:
            return
        logits = self.replay_logits if self.replay_logits is not None else strategy.model(self.batch.x)
        weight = 1.0 / self.t if self.current_weight is None else self.current_weight
        replay = self.replay_loss(logits, self.batch)
        self.loss_terms = {"current": strategy.loss.detach(), "replay": replay.detach()}
        strategy.loss = weight * strategy.loss + (1.0 - weight) * replay

    # ------------------------------------------------------------------ replay
    @torch.no_grad()
    def classify_replay(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The frozen previous classifier's class (arg-max over the classes seen before this
        experience) of replayed inputs ``x``, flattened as the source returns them."""
        old = self.labels.seen_before_bias()
        shape = self.current_data.x.shape[1:]
        return torch.cat([(self.previous_model(x[i : i + batch_size].reshape(-1, *shape)) + old).argmax(1)
                          for i in range(0, len(x), batch_size)])

    def _targets(self, logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self.replay_labels == "hard":
            return (logits + bias).argmax(dim=1)
        return F.softmax((logits + bias) / self.distill_temperature, dim=1)

    @torch.no_grad()
    def draw_replay(self, n: int, input_shape: tuple[int, ...] | torch.Size | None = None) -> ReplayBatch:
        """n replayed inputs (reshaped to ``input_shape``) with their targets, labelled by the frozen
        previous classifier (stored labels for a memory with ``hard`` labels)."""
        x, y_stored, t_stored = self.source.sample(n)
        if input_shape is not None:
            x = x.reshape(x.shape[0], *input_shape)
        use_stored = self.source.labels_from_memory and self.replay_labels == "hard"
        prev_logits = None if use_stored else self.previous_model(x)
        labels = self.labels
        if labels.scenario == "class":
            old = labels.seen_before_bias()
            heads = [(labels.active_bias(), y_stored if use_stored else self._targets(prev_logits, old))]
        elif t_stored is not None:  # a task per sample (stored, or its category's): one head per sample
            bias = labels.task_bias[t_stored]
            heads = [(bias, y_stored if use_stored else self._targets(prev_logits, bias))]
        else:  # generated replay in task-IL: labelled for every previous task
            heads = []
            for k in labels.tasks_seen_before:
                bias = labels.task_bias[k].unsqueeze(0)
                heads.append((bias, self._targets(prev_logits, bias)))
        return ReplayBatch(x, heads, y_stored)

    def _head_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dtype == torch.long:
            return F.cross_entropy(logits, target)
        temperature = self.distill_temperature
        log_p = F.log_softmax(logits / temperature, dim=1)
        return -(target * log_p).sum(dim=1).mean() * temperature**2

    def replay_loss(self, logits: torch.Tensor, batch: ReplayBatch) -> torch.Tensor:
        """L_replay: the mean over the batch's heads of the (masked) loss of ``logits`` against the targets."""
        return sum(self._head_loss(logits + bias, target) for bias, target in batch.heads) / len(batch.heads)


class CPVAEReplayPlugin(ReplayPlugin):
    """Generative replay from a ``cl_replay`` model (CP-VAE: categories in proportion to q(c)) for any
    Avalanche template::

        from avalanche.training.supervised import Naive
        from cl_replay.models import ModelConfig, build_model
        from strategies import CPVAEReplayPlugin, GeneratorSchedule

        replay = CPVAEReplayPlugin(build_model(ModelConfig(model="cpvae", categories=20)), num_classes=10,
                                   schedule=GeneratorSchedule(iterations=2000), replay_mb_size=128)
        strategy = Naive(model=classifier, optimizer=optimizer, plugins=[replay], ...)

    :param generator: a ``cl_replay`` generative model, or a ``ReplayGenerator`` / ``GeneratorCore``.
    :param schedule: how the generator trains after each experience (``GeneratorSchedule``);
        ``GeneratorSchedule(label_weight=1.0)`` ties the categories to classes (category k to class
        k mod ``label_classes``, by default ``num_classes``; it needs K >= that many categories).
    :param tie_to: with tied categories, ``class`` or ``task``: category k then belongs to task
        k mod ``label_classes`` (by default the number of ``task_classes``, else ``stream_length``),
        experience t being task t - 1; task-incremental, it replays on that task's head. In a
        class-incremental stream the experiences take the tasks' place.
    :param lr, betas: the generator's Adam.
    :param worker: a ``GeneratorWorker`` to train the generator in a parallel process.
    :param writer: a TensorBoard ``SummaryWriter`` for the generator's losses.
    :param class_balance: replay categories weighted so that the frozen classifier's labels of the
        replay are uniform over the classes seen so far (``semantics.balanced_category_weights``),
        instead of in proportion to q(c); ``balance_samples`` samples per category estimate their class mix.
    :param stream_length: the number of experiences, when known: the generator is then not trained
        after the last one (nothing replays from it). Without it, it is trained after every experience.
    :param pooled_threads: with a ``worker``, the torch threads of both processes together, which the
        worker uses while the main process waits for it (results unchanged up to float32 rounding); 0: never.
    :param classifier_pooled_threads: with a ``worker`` and a ``stream_length``, the torch threads the
        main process takes in the last experience, where the worker is idle (the classifier's training
        then differs in the last bits); 0: never.
    Other keyword arguments are ``ReplayPlugin``'s.
    """

    def __init__(self, generator: nn.Module, *, num_classes: int, schedule: GeneratorSchedule | None = None,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), worker=None, writer=None,
                 class_balance: bool = False, balance_samples: int = 200, stream_length: int | None = None,
                 pooled_threads: int = 0, classifier_pooled_threads: int = 0, tie_to: str = "class",
                 **options) -> None:
        if not isinstance(generator, GeneratorCore):
            generator = ReplayGenerator(generator)
        schedule = schedule or GeneratorSchedule()
        if schedule.label_weight > 0 and not schedule.label_classes:
            tied = num_classes if tie_to == "class" else len(options.get("task_classes") or ()) or stream_length
            if not tied:
                raise ValueError("tie_to='task' ties the categories to the stream's tasks: give their number "
                                 "(task_classes, stream_length or schedule.label_classes)")
            schedule = replace(schedule, label_classes=tied)
        source = GeneratorReplay(generator, schedule, lr=lr, betas=betas, writer=writer,
                                 worker=worker, class_balance=class_balance, balance_samples=balance_samples,
                                 stream_length=stream_length, pooled_threads=pooled_threads,
                                 classifier_pooled_threads=classifier_pooled_threads, tie_to=tie_to)
        super().__init__(source, num_classes=num_classes, **options)

    @property
    def generator(self) -> GeneratorCore:
        """The generator being trained (its frozen copy of the previous experience replays)."""
        return self.source.generator
