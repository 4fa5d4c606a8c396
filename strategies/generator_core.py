"""Replay generators without Avalanche: the generator wrapper, the category schedule that makes
CP-VAE replay follow q(c) exactly, and the generator's training loop (``generators`` adds the
Avalanche ``Generator`` interface; worker processes import only this module).

Generator training for experience t (1-based), ``iterations`` steps of Adam on minibatches of
``batch_size`` current examples plus (t > 1) ``replay_batch_size`` samples of the generator's own
frozen copy from the end of experience t-1, with the loss

    (1/t) * mean_current[rec + beta * KL] + (1 - 1/t) * mean_replay[rec + beta * KL]

(van de Ven & Tolias 2019's weighting of current and replayed data). The replay is generated
``replay_chunk`` batches at a time (``ReplayChunks``) and served batch by batch. Schedules, driven
by iteration counts so they work with 2000 iterations per experience:

* KL warm-up: beta = min(1, i / ``kl_warmup``) with i counting generator iterations from the very
  first experience, i.e. a linear warm-up during the first ``kl_warmup`` iterations of experience
  1 only (later experiences start from a trained model and keep beta = 1); 0 disables it.
* Gumbel-softmax temperature (CP-VAE): the model's own exponential decay
  tau = max(tau_min, tau_0 (tau_min / tau_0)^(e / E)) (``ModelConfig.temperature_*``), driven by the
  iteration progress e = E * i / ``temperature_iterations``, with i counted from the start of each
  experience if ``temperature_restart`` (new classes can claim categories at a high temperature)
  or from the first experience otherwise.

Categories tied to classes (``label_weight`` w > 0, CP-VAE): category k belongs to class
k mod C (C = ``label_classes``, the stream's classes). Every training row, with label y, takes the
negative ELBO of (x, y), under q(c|x,y) = q(c|x) restricted to y's categories, plus
w * (-log sum_{k mod C = y} q(c_k|x)); y is the data's own label or, for a replayed row, the class
of the category it was drawn from, and the refit below averages q(c|x,y). The categories of each class then
hold that class only, and replay drawn by category is replay drawn by class.

After training, a categorical generator (CP-VAE) refits its aggregated posterior over everything
it has learned so far: q(c) = (1/t) mean_{x in current data} q(c|x) + (1 - 1/t) mean_{x ~ replay} q(c|x),
the replay drawn (``aggregate_samples`` of them) from the previous frozen generator.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from cl_replay.divergence import loss_is_finite

from .config import REPLAY_CHUNK


__all__ = [
    "CategorySchedule",
    "GeneratorCore",
    "GeneratorReplaySampler",
    "GeneratorSchedule",
    "GeneratorState",
    "ReplayChunks",
    "category_mask",
    "make_adam",
    "refit_aggregated_posterior",
    "train_generator",
]


def make_adam(params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused kernel (torch >= 2.4; several times cheaper per step on CPU)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


class GeneratorCore(nn.Module):
    """A ``cl_replay`` generative model as a replay generator (no Avalanche import: worker processes
    use it). ``generate(n)`` returns n flattened images in [0, 1] (decoder means). For a categorical
    model (CP-VAE: it has ``aggregated_posterior`` and ``category_counts``) the categories of the n
    samples are exactly ``category_counts(n)``, proportional to q(c) with largest-remainder rounding,
    in random order; ``condition=k`` samples category k only. ``forward(x)`` is the scalar training
    loss (mean negative ELBO, KL weighted by ``self.beta``).
    """

    def __init__(self, model: nn.Module, name: str = "") -> None:
        super().__init__()
        self.model = model
        self.name = name or type(model).__name__.lower()
        self.beta = 1.0

    @property
    def categorical(self) -> bool:
        m = self.model
        return all(hasattr(m, a) for a in ("aggregated_posterior", "category_counts", "sample_with_categories"))

    @property
    def q_c(self) -> torch.Tensor | None:
        """The aggregated posterior q(c) replay follows (None for models without categories)."""
        return self.model.aggregated_posterior if self.categorical else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x.flatten(1), self.beta)[0]

    @torch.no_grad()
    def sample_counts(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exactly ``counts[k]`` samples of every category k, grouped by category, and their categories."""
        n = int(counts.sum())
        return self.model.sample_with_categories(n, counts=counts)

    @torch.no_grad()
    def sample_categories(self, categories: torch.Tensor) -> torch.Tensor:
        """One sample x ~ p(x|c) for every category c of ``categories`` (a 1-d tensor of category
        indices), in that order: ``sample_counts`` of the categories' counts, each sample then put at
        the position of its category."""
        counts = torch.bincount(categories, minlength=len(self.q_c))
        x, _ = self.sample_counts(counts)
        placed = torch.empty_like(x)
        placed[torch.argsort(categories, stable=True)] = x
        return placed

    @torch.no_grad()
    def generate(self, batch_size: int | None = None, condition=None) -> torch.Tensor:
        n = 1 if batch_size is None else int(batch_size)
        if self.categorical and condition is not None:
            x = self.model.sample(n, category=int(condition))
        elif self.categorical:
            x, _ = self.sample_counts(self.model.category_counts(n))
            x = x[torch.randperm(n, device=x.device)]
        else:
            x = self.model.sample(n)
        return x[0] if batch_size is None else x

    @torch.no_grad()
    def get_features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's representation of x (CP-VAE: hidden state h; VAE: posterior mean)."""
        x = x.flatten(1)
        if hasattr(self.model, "encode"):
            out = self.model.encode(x)
        else:
            out = self.model.encoder(x)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def sample_grid(self, n: int = 100) -> torch.Tensor:
        """n samples as they are replayed; for a categorical model grouped by category, most probable first."""
        if not self.categorical:
            return self.generate(n)
        counts = self.model.category_counts(n)
        x, c = self.sample_counts(counts)
        rank = torch.argsort(torch.argsort(self.q_c, descending=True))
        return x[torch.argsort(rank[c], stable=True)]

    def frozen_copy(self):
        clone = copy.deepcopy(self).eval()
        for p in clone.parameters():
            p.requires_grad_(False)
        return clone


class CategorySchedule:
    """Replay categories for a whole experience, drawn in advance.

    ``counts`` (e.g. ``category_counts(total)``: proportional to q(c), largest remainder) are laid
    out as ``total`` category indices in random order; every call of ``next_categories(n)`` takes
    the next n of them (``next_counts(n)``: their counts per category). Over the schedule the
    per-category totals equal ``counts`` exactly; within a batch they are a random split (no
    category is starved by per-batch rounding). A new random order is laid out when the schedule
    runs out.
    """

    def __init__(self, counts: torch.Tensor, generator: torch.Generator | None = None) -> None:
        self.counts = counts.long().cpu()
        self.categories = len(self.counts)
        self.generator = generator
        self._order = torch.empty(0, dtype=torch.long)
        self._position = 0
        self.drawn = torch.zeros(self.categories, dtype=torch.long)

    def _refill(self) -> None:
        labels = torch.repeat_interleave(torch.arange(self.categories), self.counts)
        self._order = labels[torch.randperm(len(labels), generator=self.generator)]
        self._position = 0

    def next_categories(self, n: int) -> torch.Tensor:
        """The next n category indices of the schedule, in its random order."""
        parts, needed = [], n
        while needed > 0:
            if self._position >= len(self._order):
                if int(self.counts.sum()) == 0:
                    raise ValueError("empty category schedule")
                self._refill()
            take = self._order[self._position : self._position + needed]
            self._position += len(take)
            needed -= len(take)
            parts.append(take)
        categories = torch.cat(parts)
        self.drawn += torch.bincount(categories, minlength=self.categories)
        return categories

    def next_counts(self, n: int) -> torch.Tensor:
        """How many of the next n category indices fall on each category."""
        return torch.bincount(self.next_categories(n), minlength=self.categories)


class GeneratorReplaySampler:
    """Replay batches from a frozen generator: categories from a :class:`CategorySchedule` over
    ``total`` samples with counts proportional to its q(c) (or to ``weights``, e.g. class-balanced
    ones), or plain ``generate(n)`` otherwise."""

    def __init__(self, generator: GeneratorCore, total: int, seed_generator: torch.Generator | None = None,
                 weights: torch.Tensor | None = None) -> None:
        self.generator = generator
        self.schedule = None
        if generator.categorical:
            counts = generator.model.category_counts(total, weights).cpu()
            self.schedule = CategorySchedule(counts, seed_generator)

    def sample(self, n: int) -> torch.Tensor:
        """n samples; with a schedule, of its next n categories in the schedule's order."""
        if self.schedule is None:
            return self.generator.generate(n)
        return self.generator.sample_categories(self.schedule.next_categories(n).to(self.generator.device))

    def sample_with_categories(self, n: int) -> TensorDataset:
        """Like ``sample`` (a categorical generator only), with the category of every sample: rows
        (x, c) that slice together."""
        categories = self.schedule.next_categories(n).to(self.generator.device)
        return TensorDataset(self.generator.sample_categories(categories), categories)


def category_mask(labels: torch.Tensor, categories: int, classes: int) -> torch.Tensor:
    """(B, K) booleans: category k is allowed for label y when k mod ``classes`` = y."""
    return torch.arange(categories, device=labels.device) % classes == labels.unsqueeze(1)


class ReplayChunks:
    """Replay batches of ``batch_size`` rows served from chunks drawn ahead.

    ``draw(m)`` makes m rows at once (generated samples, or samples with their labels: anything
    sliced by rows); ``next()`` serves them ``batch_size`` at a time, in the order drawn. A chunk
    holds ``chunk_batches`` batches, or the batches still missing from the ``total`` rows an
    experience uses when fewer, so that a ``CategorySchedule`` laid out over ``total`` samples is
    used up exactly and never drawn past. Drawn from a ``GeneratorReplaySampler``, batch i gets the
    categories it would get with ``chunk_batches = 1`` (the schedule's next ``batch_size``
    categories); only the networks run on more rows at a time.
    """

    def __init__(self, draw: Callable[[int], Any], batch_size: int, chunk_batches: int = 1,
                 total: int | None = None) -> None:
        if batch_size < 1 or chunk_batches < 1:
            raise ValueError(f"batch_size and chunk_batches must be positive, got {batch_size} and {chunk_batches}")
        self.draw = draw
        self.batch_size = batch_size
        self.chunk_batches = chunk_batches
        self.total = total
        self.served = 0
        self._chunk: Any = None
        self._position = self._rows = 0

    def next(self) -> Any:
        """The next batch of ``batch_size`` rows."""
        if self._position >= self._rows:
            batches = self.chunk_batches
            if self.total is not None and self.served < self.total:
                batches = min(batches, -(-(self.total - self.served) // self.batch_size))
            self._rows, self._position = batches * self.batch_size, 0
            self._chunk = self.draw(self._rows)
        batch = self._chunk[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        self.served += self.batch_size
        return batch


@dataclass
class GeneratorSchedule:
    """How the generator is trained in each experience (see the module docstring)."""

    iterations: int = 2000
    batch_size: int = 128
    replay_batch_size: int = 128
    kl_warmup: int = 0
    temperature_iterations: int = 2000
    temperature_restart: bool = True
    aggregate_samples: int = 10000
    replay_chunk: int = REPLAY_CHUNK
    log_every: int = 50
    on_nan: str = "stop"
    label_weight: float = 0.0  # > 0: categories tied to classes (module docstring)
    label_classes: int = 0  # a non-finite loss stops training (DivergenceError) or, "skip", skips the step


@dataclass
class GeneratorState:
    """What persists between experiences: the optimizer and the global iteration counter."""

    optimizer: torch.optim.Optimizer
    iteration: int = 0
    history: list = field(default_factory=list)


def _set_temperature(model: nn.Module, progress: float) -> float | None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "temperature"):
        return None
    epochs = max(1, getattr(config, "temperature_epochs", 1))
    return model.start_epoch(min(progress, 1.0) * epochs).get("temperature")


def train_generator(
    generator: GeneratorCore,
    previous: GeneratorCore | None,
    data_x: torch.Tensor,
    experience: int,
    state: GeneratorState,
    schedule: GeneratorSchedule,
    *,
    progress=None,
    writer=None,
    batch_hook=None,
    data_y: torch.Tensor | None = None,
) -> dict:
    """Train ``generator`` on ``data_x`` plus replay from ``previous`` (experience ``experience``, 1-based).
    With ``schedule.label_weight`` > 0 the categories are tied to classes, ``data_y`` the labels.

    ``batch_hook(x_current, x_replay)`` (tests) sees every training batch. Returns statistics:
    iterations, wall time, ms per iteration, final loss terms, replay samples seen, q(c).
    """
    model = generator.model
    device = data_x.device
    n_data = data_x.shape[0]
    t = experience
    weight_current = 1.0 / t
    labelled = schedule.label_weight > 0
    if labelled and (data_y is None or not generator.categorical or schedule.label_classes < 1):
        raise ValueError("categories tied to classes need a categorical generator, the data's labels and label_classes")
    replay = None
    if previous is not None and t > 1:
        total = schedule.iterations * schedule.replay_batch_size
        sampler = GeneratorReplaySampler(previous, total)
        replay = ReplayChunks(sampler.sample_with_categories if labelled else sampler.sample,
                              schedule.replay_batch_size, schedule.replay_chunk, total)
    model.train()
    optimizer = state.optimizer
    order = torch.randperm(n_data, device=device)
    position = 0
    logged_sum: dict[str, torch.Tensor] = {}
    logged_count = 0
    replay_seen = 0
    skipped = 0
    last: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(schedule.iterations):
        if position + schedule.batch_size > n_data:
            order, position = torch.randperm(n_data, device=device), 0
        rows = order[position : position + schedule.batch_size]
        x = data_x[rows]
        position += schedule.batch_size
        beta = min(1.0, (state.iteration + 1) / schedule.kl_warmup) if schedule.kl_warmup > 0 else 1.0
        local = i if schedule.temperature_restart else state.iteration
        temperature = _set_temperature(model, local / max(1, schedule.temperature_iterations))
        x_replay = replay.next() if replay is not None else None
        mask = None
        if labelled:
            labels = data_y[rows]
            if x_replay is not None:
                x_replay, replay_categories = x_replay
                labels = torch.cat([labels, replay_categories % schedule.label_classes])
            mask = category_mask(labels, len(generator.q_c), schedule.label_classes)
        if batch_hook is not None:
            batch_hook(x, x_replay)
        n = x.shape[0]
        batch = x if x_replay is None else torch.cat([x, x_replay])
        terms = model.elbo_terms(batch) if mask is None else model.elbo_terms(batch, category_mask=mask)
        kl = sum(v for k, v in terms.items() if k.startswith("kl"))
        per_example = terms["reconstruction"] + beta * kl
        if mask is not None:
            per_example = per_example + schedule.label_weight * terms["category_label_nll"]
        if x_replay is None:
            loss = per_example.mean()
        else:
            loss = weight_current * per_example[:n].mean() + (1.0 - weight_current) * per_example[n:].mean()
        if not loss_is_finite(loss, terms, f"experience {t}, generator iteration {i + 1}", schedule.on_nan):
            skipped += 1
            if progress is not None:
                progress.update(1)
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.iteration += 1
        replay_seen += 0 if x_replay is None else x_replay.shape[0]
        # Running sums stay tensors: the divergence check is the loop's one synchronisation.
        with torch.no_grad():
            current = {"loss": loss.detach(), "neg_elbo_current": (terms["reconstruction"][:n] + kl[:n]).mean()}
            if x_replay is not None:
                current["neg_elbo_replay"] = (terms["reconstruction"][n:] + kl[n:]).mean()
            if mask is not None:
                current["category_label_nll"] = terms["category_label_nll"].mean()
            for k, v in current.items():
                logged_sum[k] = logged_sum.get(k, 0.0) + v.detach()
        logged_count += 1
        if progress is not None:
            progress.update(1)
        if writer is not None and (i + 1) % schedule.log_every == 0:
            for k, v in logged_sum.items():
                writer.add_scalar(f"generator/{k}", float(v) / logged_count, state.iteration)
            writer.add_scalar("generator/beta", beta, state.iteration)
            if temperature is not None:
                writer.add_scalar("generator/temperature", temperature, state.iteration)
        if (i + 1) % schedule.log_every == 0 or i + 1 == schedule.iterations:
            last = {k: float(v) / logged_count for k, v in logged_sum.items()}
            logged_sum, logged_count = {}, 0
    wall = time.perf_counter() - start
    model.eval()
    fit_start = time.perf_counter()
    q_c = refit_aggregated_posterior(generator, previous, data_x, t, schedule.aggregate_samples,
                                     data_y if labelled else None, schedule.label_classes)
    stats = {
        "experience": t,
        "iterations": schedule.iterations,
        "wall_time_s": wall,
        "ms_per_iteration": 1000.0 * wall / max(1, schedule.iterations),
        "refit_time_s": time.perf_counter() - fit_start,
        "replay_samples": replay_seen,
        "skipped_steps": skipped,
        "final": last,
        "q_c": None if q_c is None else [round(v, 6) for v in q_c.tolist()],
    }
    state.history.append(stats)
    return stats


@torch.no_grad()
def refit_aggregated_posterior(
    generator: GeneratorCore, previous: GeneratorCore | None, data_x: torch.Tensor, t: int, replay_samples: int,
    data_y: torch.Tensor | None = None, label_classes: int = 0,
) -> torch.Tensor | None:
    """q(c) over current data and (t > 1) replay of the previous generator, weighted 1/t and 1 - 1/t.
    With ``data_y`` (categories tied to ``label_classes`` classes) of q(c|x,y), the replay's y being
    the class of the category it was drawn from."""
    model = generator.model
    x_replay = replay_mask = None
    if previous is not None and t > 1 and replay_samples > 0:
        sampler = GeneratorReplaySampler(previous, replay_samples)
        sizes = [min(1000, replay_samples - k) for k in range(0, replay_samples, 1000)]
        if data_y is None:
            x_replay = torch.cat([sampler.sample(n) for n in sizes])
        else:
            drawn = [sampler.sample_with_categories(n).tensors for n in sizes]
            x_replay = torch.cat([x for x, _ in drawn])
            c_replay = torch.cat([c for _, c in drawn])
            replay_mask = category_mask(c_replay % label_classes, len(generator.q_c), label_classes)
    if not generator.categorical:
        model.fit_generation(data_x if x_replay is None else torch.cat([data_x, x_replay]))
        return None
    data_mask = None if data_y is None else category_mask(data_y, len(generator.q_c), label_classes)
    model.fit_generation(data_x, category_mask=data_mask)
    q_current = model.aggregated_posterior.clone()
    if x_replay is None:
        return q_current
    model.fit_generation(x_replay, category_mask=replay_mask)
    q = q_current / t + (1.0 - 1.0 / t) * model.aggregated_posterior
    model.aggregated_posterior.copy_(q / q.sum())
    return model.aggregated_posterior.clone()
