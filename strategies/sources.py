"""What the classifier replays: ``NoReplay`` (fine-tuning, and the joint upper bound trained on the
union), ``BufferReplay`` (exact replay of a class-balanced memory of ``per_class`` stored examples
per class, with their true labels) and ``GeneratorReplay`` (a generative model trained after each
experience on the experience plus its own replay; see ``generator_core``).

A source sees an experience twice: ``begin_experience`` before the classifier trains on it (the
experience's data known) and ``end_experience`` after; in between the classifier draws replay
with ``sample(n)``. ``plugin.ReplayPlugin`` drives a source inside any Avalanche template.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from .generator_core import (
    GeneratorCore,
    GeneratorReplaySampler,
    GeneratorSchedule,
    GeneratorState,
    make_adam,
    train_generator,
)
from .streams import ExperienceTensors

__all__ = ["BufferReplay", "GeneratorReplay", "NoReplay", "ReplaySource"]


class ReplaySource:
    """What the classifier replays. Subclasses: ``NoReplay``, ``BufferReplay``, ``GeneratorReplay``."""

    name = "replay"
    labels_from_memory = False  # True: sample() returns stored (y, t)

    def active(self, t: int) -> bool:
        """Whether experience t (1-based) gets replay."""
        return False

    def begin_experience(self, data: ExperienceTensors, t: int, replay_total: int,
                         classify: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         replay_classes: list[int] | None = None) -> None:
        """Before the classifier trains on experience t, whose training data is ``data``; it will draw
        ``replay_total`` replayed samples in all, labelled by ``classify`` (the frozen previous
        classifier: inputs -> class indices among ``replay_classes``, the classes seen before t)."""

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """n replayed inputs, with stored labels and task labels if the source keeps them."""
        raise NotImplementedError

    def end_experience(self, data: ExperienceTensors, t: int, progress=None) -> dict:
        """After the classifier trained on experience t; returns statistics to record."""
        return {}

    def poll_progress(self, progress) -> None:
        """Advance the progress bar by work done elsewhere (a worker process)."""

    def close(self) -> None:
        """Release resources (worker processes)."""

    def sample_grid(self, n: int = 100) -> torch.Tensor | None:
        """Images of what will be replayed next (for the per-experience sample grids)."""
        return None

    def extra_iterations(self, t: int) -> int:
        """Iterations this source runs in experience t (1-based) besides the classifier's (progress bar)."""
        return 0

    def state_dict(self) -> dict:
        """What the source must keep between experiences for a resumed run to go on identically."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` (on a source built with the same settings)."""


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

    def end_experience(self, data, t, progress=None):
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

    def state_dict(self) -> dict:
        return {"memory": None if self.memory is None else vars(self.memory),
                "rng": None if self.rng is None else self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.memory = None if state["memory"] is None else ExperienceTensors(**state["memory"])
        if self.rng is not None:
            self.rng.set_state(state["rng"])


class GeneratorReplay(ReplaySource):
    """Generative replay: ``generator`` is trained after each experience on the experience plus
    replay of its own frozen copy from the previous experience; the classifier's replay in
    experience t comes from the copy frozen at the end of t-1 (categories ∝ its q(c), drawn by a
    ``CategorySchedule`` over the ``replay_total`` samples of the experience).

    With a ``worker`` (``strategies.worker.GeneratorWorker``) the generator's training for
    experience t runs in that process while the classifier trains on t (both only need the copy
    frozen at the end of t-1); ``end_experience`` waits for it and loads the new weights. With
    ``pooled_threads`` (the threads of both processes together) the worker takes the main process's
    threads too while the main process waits for it (the results stay the same up to float32 rounding). With
    ``classifier_pooled_threads`` the main process takes that many threads in an experience after
    which the generator does not train, when the worker has nothing to do; the classifier's training
    in that experience then differs in the last bits (the weight gradient of its output layer, a sum
    over the batch, is split over threads differently).

    Given ``stream_length`` (the number of experiences), the generator is not trained after the
    last one: nothing would replay from it. Without it the stream may go on, and the generator is
    trained after every experience.

    With categories tied (``schedule.label_weight`` > 0), ``tie_to`` names what they are tied to:
    ``class`` (the data's labels y) or ``task``: experience t is task t - 1 (a task-incremental
    stream's task; in a class-incremental stream the experiences take the tasks' place), and
    ``schedule.label_classes`` is the number of tasks. Tied to tasks, every replayed sample carries
    the task of the category it was drawn from (k mod tasks): a task-incremental classifier rehearses
    it on that task's head only, a class-incremental one on its one head like any replay; either way
    every task keeps categories of its own, and the replay follows the tasks' shares of q(c).
    """

    def __init__(self, generator: GeneratorCore, schedule: GeneratorSchedule, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), writer=None, batch_hook=None, worker=None,
                 class_balance: bool = False, balance_samples: int = 200, stream_length: int | None = None,
                 pooled_threads: int = 0, classifier_pooled_threads: int = 0, tie_to: str = "class") -> None:
        if tie_to not in ("class", "task"):
            raise ValueError(f"tie_to must be 'class' or 'task', got {tie_to!r}")
        self.generator = generator
        self.tie_to = tie_to
        self.own_threads = torch.get_num_threads()
        self.pooled_threads = pooled_threads if worker is not None else 0
        self.classifier_pooled_threads = classifier_pooled_threads if worker is not None else 0
        self.stream_length = stream_length
        self.schedule = schedule
        self.class_balance = class_balance
        self.balance_samples = balance_samples
        self.balance_report: dict | None = None
        self.worker = worker
        self.state = None if worker is not None else GeneratorState(make_adam(generator.parameters(), lr=lr, betas=betas))
        self.previous: GeneratorCore | None = None
        self.sampler: GeneratorReplaySampler | None = None
        self.writer = writer
        self.batch_hook = batch_hook
        self.trained = False
        self._progress_seen = 0
        self._worker_state: dict = {}  # the worker's optimizer, iteration count and RNG after its last job

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.generator.name

    def active(self, t: int) -> bool:
        return self.trained and t > 1

    def trains_after(self, t: int) -> bool:
        """Whether the generator is trained after experience t: unless t is the stream's last."""
        return self.stream_length is None or t < self.stream_length

    def begin_experience(self, data, t, replay_total, classify=None, replay_classes=None):
        self.generator.to(data.x.device)
        self.balance_report = None
        if self.active(t):
            self.previous = self.generator.frozen_copy()
            weights = None
            if self.class_balance and self.previous.categorical and classify is not None and replay_classes:
                weights = self._balanced_weights(classify, replay_classes)
            self.sampler = GeneratorReplaySampler(self.previous, replay_total, weights=weights)
        if self.worker is not None and self.trains_after(t):
            if self.pooled_threads:
                self.worker.grant_threads(self.own_threads)
            self.worker.submit(data.x, t, self.schedule, self._labels(data, t))
        elif self.classifier_pooled_threads:
            torch.set_num_threads(self.classifier_pooled_threads)

    def _balanced_weights(self, classify, replay_classes: list[int]) -> torch.Tensor:
        """Class-balanced replay: category weights that make the replay's class histogram, as
        ``classify`` labels it, uniform over ``replay_classes`` (``semantics.balanced_category_weights``;
        each category's class mix estimated from ``balance_samples`` of its samples)."""
        from .semantics import balanced_category_weights, category_class_mix, replay_class_histogram

        q = self.previous.q_c.detach().cpu()
        num_classes = max(replay_classes) + 1
        used, mix, _ = category_class_mix(self.previous, classify, num_classes, self.balance_samples)
        weights = torch.zeros_like(q)
        weights[used] = balanced_category_weights(mix[used], q[used], replay_classes)
        self.balance_report = {
            "samples_per_category": self.balance_samples,
            "category_weights": [round(v, 6) for v in weights.tolist()],
        }
        for name, w in (("q", q), ("balanced", weights)):
            histogram = replay_class_histogram(mix, w)
            self.balance_report[f"replay_class_histogram_{name}"] = {c: round(float(histogram[c]), 4) for c in replay_classes}
        return weights.to(self.previous.device)

    @property
    def tied_to_tasks(self) -> bool:
        return self.schedule.label_weight > 0 and self.tie_to == "task"

    def _labels(self, data, t: int) -> torch.Tensor | None:
        """What the generator's categories are tied to, when they are: the experience's classes, or its
        task t - 1 (else nothing is sent)."""
        if self.schedule.label_weight <= 0:
            return None
        return torch.full_like(data.y, t - 1) if self.tie_to == "task" else data.y

    def poll_progress(self, progress):
        if self.worker is not None and progress is not None:
            count = self.worker.progress_count()
            if count > self._progress_seen:
                progress.update(count - self._progress_seen)
                self._progress_seen = count

    def sample(self, n):
        if not self.tied_to_tasks:
            return self.sampler.sample(n), None, None
        x, categories = self.sampler.sample_with_categories(n).tensors
        return x, None, categories % self.schedule.label_classes

    def end_experience(self, data, t, progress=None):
        if torch.get_num_threads() != self.own_threads:
            torch.set_num_threads(self.own_threads)
        if not self.trains_after(t):
            stats = {"experience": t, "iterations": 0}
        elif self.worker is None:
            stats = train_generator(
                self.generator, self.previous if t > 1 else None, data.x, t, self.state, self.schedule,
                progress=progress, writer=self.writer, batch_hook=self.batch_hook, data_y=self._labels(data, t),
            )
        else:
            wait = time.perf_counter()
            if self.pooled_threads:
                self.worker.grant_threads(self.pooled_threads)
            state_dict, stats, records, self._worker_state = self.worker.result()
            stats["main_wait_s"] = time.perf_counter() - wait
            if self.pooled_threads:
                self.worker.grant_threads(self.own_threads)
            self.generator.load_state_dict(state_dict)
            self.poll_progress(progress)
            if self.writer is not None:
                for tag, value, step in records:
                    self.writer.add_scalar(tag, value, step)
        self.trained = self.trained or self.trains_after(t)
        if self.sampler is not None and self.sampler.schedule is not None:
            stats["classifier_replay_category_counts"] = self.sampler.schedule.drawn.tolist()
        if self.balance_report is not None:
            stats["class_balance"] = self.balance_report
        return stats

    def sample_grid(self, n: int = 100):
        return self.generator.sample_grid(n) if self.trained else None

    def extra_iterations(self, t: int) -> int:
        return self.schedule.iterations if self.trains_after(t) else 0

    def close(self):
        if self.worker is not None:
            self.worker.close()

    def state_dict(self) -> dict:
        """The generator, its optimizer and iteration count (and, trained in a worker, the worker's RNG).
        Its frozen copy for the next experience is a copy of this generator, made when that starts."""
        state = {"generator": self.generator.state_dict(), "trained": self.trained}
        if self.worker is None:
            return state | {"optimizer": self.state.optimizer.state_dict(), "iteration": self.state.iteration}
        return state | self._worker_state

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.trained = state["trained"]
        if self.worker is None:
            self.state.optimizer.load_state_dict(state["optimizer"])
            self.state.iteration = state["iteration"]
        else:
            self._worker_state = {k: state[k] for k in ("optimizer", "iteration", "rng")}
            self.worker.restore(self.generator, **self._worker_state)
