"""Continual-learning streams built with Avalanche's ``nc_benchmark`` from the project's data layer.

Three streams, all offline from a data root (``cl_replay.data.load_dataset``):

* ``split_mnist``: MNIST, 5 experiences of 2 digits.
* ``split_fashion_mnist``: Fashion-MNIST, 5 experiences of 2 classes.
* ``split_omniglot``: Omniglot (the 28x28 substitute of ``cl_replay.data``), one experience per
  alphabet, the alphabet's characters as classes (``n_experiences`` keeps the first alphabets).
  Its data is the ``per_character`` split of ``cl_replay.data``: of each character's 20 drawings,
  14 train, 2 validation, 4 test, so every character of the stream is in all three splits and an
  experience's test and validation sets hold exactly its training classes. (Avalanche's own
  ``SplitOmniglot`` trains on the background characters and tests on the evaluation characters,
  different characters under reused labels, which is why the stream is built here instead.)

Class order (van de Ven & Tolias 2019): seed 0 gives the standard order (digits 0..9 in pairs,
alphabets sorted by name); any other seed a permutation drawn with ``torch.Generator`` seeded with
it (of the classes for MNIST-like streams, of the alphabets for Omniglot). Pixels stay grey in
[0, 1]: training images are never binarised and the evaluation split is loaded grey as well.

Scenarios: ``class`` (class-incremental: one head over every class, task label 0 everywhere) and
``task`` (task-incremental: experience i carries task label i at train and test time).

Labels are the dataset's class indices, made contiguous over the classes the stream uses (for
MNIST-like streams they are the digits / Fashion-MNIST classes themselves).

Besides the Avalanche benchmark the stream keeps every experience's tensors, so the strategies can
draw minibatches by indexing tensors instead of going through a DataLoader:
``ContinualStream.tensors(dataset)`` maps an experience dataset of the benchmark to them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "SCENARIOS",
    "STREAMS",
    "ContinualStream",
    "ExperienceTensors",
    "StreamError",
    "build_stream",
    "class_groups",
    "extract_tensors",
    "stream_from_tensors",
]

SCENARIOS = ("class", "task")


class StreamError(ValueError):
    """A stream that cannot be built as asked (unknown name, scenario, too many experiences...)."""


@dataclass(frozen=True)
class _StreamSpec:
    dataset: str
    experiences: int  # default number of experiences (0: one per alphabet)
    description: str


STREAMS: dict[str, _StreamSpec] = {
    "split_mnist": _StreamSpec("mnist", 5, "MNIST, 5 experiences of 2 digits"),
    "split_fashion_mnist": _StreamSpec("fashion_mnist", 5, "Fashion-MNIST, 5 experiences of 2 classes"),
    "split_omniglot": _StreamSpec("omniglot", 0, "Omniglot, one experience per alphabet, characters as classes"),
}


@dataclass
class ExperienceTensors:
    """The data of one experience: images (N, D) in [0, 1], labels (N,), task labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> ExperienceTensors:
        return ExperienceTensors(self.x.to(device), self.y.to(device), self.t.to(device))

    @staticmethod
    def cat(parts: list[ExperienceTensors]) -> ExperienceTensors:
        return ExperienceTensors(*(torch.cat([getattr(p, k) for p in parts]) for k in ("x", "y", "t")))


@dataclass
class ContinualStream:
    """An Avalanche benchmark plus what the strategies and the reports need to know about it."""

    name: str
    scenario: str
    benchmark: object  # avalanche NCScenario
    experience_classes: list[list[int]]  # labels of each experience, in order of appearance
    class_names: list[str]  # name of every label
    experience_names: list[str]
    train: list[ExperienceTensors]
    test: list[ExperienceTensors]
    image_shape: tuple[int, int, int] = (1, 28, 28)
    _registry: dict[int, ExperienceTensors] = field(default_factory=dict, repr=False)
    _keep_alive: list = field(default_factory=list, repr=False)

    @property
    def n_experiences(self) -> int:
        return len(self.experience_classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_order(self) -> list[int]:
        return [c for group in self.experience_classes for c in group]

    @property
    def train_stream(self):
        return self.benchmark.train_stream

    @property
    def test_stream(self):
        return self.benchmark.test_stream

    def class_to_task(self) -> torch.Tensor:
        """(C,) the experience (task) index of every class."""
        table = torch.zeros(self.num_classes, dtype=torch.long)
        for task, classes in enumerate(self.experience_classes):
            table[classes] = task
        return table

    def tensors(self, dataset) -> ExperienceTensors | None:
        """The tensors of an experience dataset of this stream's benchmark(s), or None."""
        return self._registry.get(id(dataset))

    def register(self, dataset, tensors: ExperienceTensors) -> None:
        """Remember ``tensors`` as the content of ``dataset`` (kept alive so its id stays unique)."""
        if len(dataset) != len(tensors):
            raise RuntimeError(f"experience dataset has {len(dataset)} examples, the tensors {len(tensors)}")
        self._keep_alive.append(dataset)
        self._registry[id(dataset)] = tensors

    def joint(self):
        """The union of every training experience as ONE experience (the ``joint`` upper bound).

        Returns the single training experience; its tensors are registered with this stream, so
        a strategy that looks tensors up here finds them. Test stays this stream's test stream.
        """
        from avalanche.benchmarks import nc_benchmark

        union = ExperienceTensors.cat(self.train)
        bench = nc_benchmark(
            TensorDataset(union.x.cpu(), union.y.cpu()),
            TensorDataset(union.x.cpu(), union.y.cpu()),  # unused: evaluation uses this stream's test stream
            n_experiences=1,
            task_labels=False,
            shuffle=False,
            fixed_class_order=self.class_order,
        )
        experience = bench.train_stream[0]
        # Task labels of the union come from the classes (a class belongs to one experience).
        union = ExperienceTensors(union.x, union.y, self.class_to_task().to(union.y.device)[union.y] * (self.scenario == "task"))
        self.register(experience.dataset, union)
        self._keep_alive.append(bench)
        return experience


def class_groups(name: str, seed: int, labels_by_group: list[list[int]] | None = None, num_classes: int = 10,
                 n_experiences: int | None = None) -> list[list[int]]:
    """The classes of each experience: standard order for seed 0, a seeded permutation otherwise.

    MNIST-like streams (``labels_by_group`` None): ``num_classes`` classes in pairs, permuted as a
    whole. Omniglot: ``labels_by_group`` lists each alphabet's characters; the alphabets are
    permuted (characters keep their order within an alphabet) and the first ``n_experiences`` kept.
    """
    generator = torch.Generator().manual_seed(seed)
    if labels_by_group is None:
        order = list(range(num_classes)) if seed == 0 else torch.randperm(num_classes, generator=generator).tolist()
        n = n_experiences or 5
        if num_classes % n:
            raise StreamError(f"{num_classes} classes cannot be split evenly into {n} experiences")
        size = num_classes // n
        return [order[i * size : (i + 1) * size] for i in range(n)]
    groups = list(range(len(labels_by_group)))
    if seed != 0:
        groups = torch.randperm(len(groups), generator=generator).tolist()
    n = n_experiences or len(groups)
    if n > len(groups):
        raise StreamError(f"the stream has only {len(groups)} groups (alphabets); asked for {n} experiences")
    return [list(labels_by_group[g]) for g in groups[:n]]


def stream_from_tensors(
    name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    experience_classes: list[list[int]],
    *,
    scenario: str = "class",
    class_names: list[str] | None = None,
    experience_names: list[str] | None = None,
    device: torch.device | str = "cpu",
) -> ContinualStream:
    """A stream over the given tensors whose experience i holds the classes ``experience_classes[i]``.

    Labels that appear in no experience are dropped; the others are renumbered 0..C-1 in increasing
    order of the original label (a no-op when every label 0..C-1 is used), ``experience_classes``
    is renumbered the same way. The benchmark is Avalanche's ``nc_benchmark`` with that class order.
    """
    from avalanche.benchmarks import nc_benchmark

    if scenario not in SCENARIOS:
        raise StreamError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    used = sorted({c for group in experience_classes for c in group})
    if len(used) != sum(len(g) for g in experience_classes):
        raise StreamError("a class appears in more than one experience")
    remap = torch.full((max(int(train_y.max()), int(test_y.max()), used[-1]) + 1,), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    groups = [[int(remap[c]) for c in group] for group in experience_classes]
    names = [str(c) for c in used] if class_names is None else [class_names[c] for c in used]

    def select(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = remap[y] >= 0
        return x[keep].contiguous(), remap[y[keep]]

    train_x, train_y = select(train_x, train_y)
    test_x, test_y = select(test_x, test_y)
    for part, y in (("train", train_y), ("test", test_y)):
        missing = sorted(set(range(len(used))) - set(y.unique().tolist()))
        if missing:
            raise StreamError(f"{name}: classes {[names[c] for c in missing][:10]} have no {part} examples")
    bench = nc_benchmark(
        TensorDataset(train_x, train_y),
        TensorDataset(test_x, test_y),
        n_experiences=len(groups),
        task_labels=scenario == "task",
        shuffle=False,
        fixed_class_order=[c for g in groups for c in g],
        per_exp_classes={i: len(g) for i, g in enumerate(groups)},
    )
    stream = ContinualStream(
        name=name,
        scenario=scenario,
        benchmark=bench,
        experience_classes=groups,
        class_names=names,
        experience_names=experience_names or [f"exp{i}: {', '.join(names[c] for c in g[:4])}{', ...' if len(g) > 4 else ''}"
                                              for i, g in enumerate(groups)],
        train=[],
        test=[],
    )
    for part, x, y, avalanche_stream, store in (
        ("train", train_x, train_y, bench.train_stream, stream.train),
        ("test", test_x, test_y, bench.test_stream, stream.test),
    ):
        for i, (experience, classes) in enumerate(zip(avalanche_stream, groups)):
            mask = torch.isin(y, torch.tensor(classes))
            task = i if scenario == "task" else 0
            tensors = ExperienceTensors(x[mask], y[mask], torch.full((int(mask.sum()),), task, dtype=torch.long)).to(device)
            if sorted(experience.classes_in_this_experience) != sorted(classes):
                raise RuntimeError(f"{part} experience {i} of the benchmark has classes "
                                   f"{experience.classes_in_this_experience}, expected {classes}")
            stream.register(experience.dataset, tensors)
            store.append(tensors)
    return stream


def build_stream(
    name: str,
    *,
    data_root: str | os.PathLike | None = None,
    seed: int = 0,
    scenario: str = "class",
    n_experiences: int = 0,
    eval_split: str = "test",
    device: torch.device | str = "cpu",
    download: bool = True,
) -> ContinualStream:
    """Stream ``name`` (see :data:`STREAMS`) from the data under ``data_root``.

    ``eval_split`` is ``test`` (the official test set) or ``val`` (the validation split, for tuning).
    ``n_experiences`` 0 keeps the stream's default (5 for the split MNIST-like streams, every
    alphabet for Omniglot). Missing data is downloaded into a writable data root unless ``download``
    is False.
    """
    from cl_replay.data import load_dataset

    if name not in STREAMS:
        raise StreamError(f"unknown stream {name!r}; choose one of: {', '.join(STREAMS)}")
    if scenario not in SCENARIOS:
        raise StreamError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    if eval_split not in ("test", "val"):
        raise StreamError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
    spec = STREAMS[name]
    split = {"omniglot_split": "per_character"} if spec.dataset == "omniglot" else {}
    data = load_dataset(spec.dataset, data_root, binarize_eval=False, download=download, **split)
    evaluation = data.test if eval_split == "test" else data.val
    if spec.dataset == "omniglot":
        assert data.train.groups is not None and data.group_names is not None
        all_groups = torch.cat([data.train.groups, evaluation.groups])
        all_labels = torch.cat([data.train.y, evaluation.y])
        labels_by_group = [sorted(all_labels[all_groups == g].unique().tolist()) for g in range(len(data.group_names))]
        groups = class_groups(name, seed, labels_by_group, n_experiences=n_experiences or None)
        group_of = {tuple(labels_by_group[g]): g for g in range(len(labels_by_group))}
        experience_names = [data.group_names[group_of[tuple(g)]] for g in groups]
    else:
        groups = class_groups(name, seed, num_classes=data.num_classes, n_experiences=n_experiences or spec.experiences)
        experience_names = None
    return stream_from_tensors(
        name,
        data.train.x,
        data.train.y,
        evaluation.x,
        evaluation.y,
        groups,
        scenario=scenario,
        class_names=data.class_names,
        experience_names=experience_names,
        device=device,
    )


def extract_tensors(dataset, task_default: int = 0) -> ExperienceTensors:
    """Any Avalanche classification dataset as tensors (one pass of a DataLoader; the slow path)."""
    loader = DataLoader(dataset, batch_size=max(1, min(len(dataset), 4096)), shuffle=False, num_workers=0,
                        collate_fn=getattr(dataset, "collate_fn", None))
    xs, ys, ts = [], [], []
    for batch in loader:
        xs.append(batch[0].reshape(batch[0].shape[0], -1).float())
        ys.append(batch[1].long())
        ts.append(batch[2].long() if len(batch) > 2 else torch.full_like(batch[1], task_default).long())
    return ExperienceTensors(torch.cat(xs), torch.cat(ys), torch.cat(ts))
