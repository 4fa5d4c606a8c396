"""Split Omniglot on the literature's protocol: alphabets as experiences, characters as classes,
every character in the training, validation and test splits (``cl_replay.data``'s
``per_character`` split), both scenarios end to end; the ``static`` split keeps chardata.mat's
sizes stratified by character.

Tiny PNG trees are written by the tests; one smoke test reads the real Omniglot and skips without it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from cl_replay import data
from cl_replay.data import DatasetError, load_dataset
from strategies.run import CLConfig, run_experiment
from strategies.streams import build_stream

from conftest import REAL_DATA

ALPHABETS = ("Alpha", "Beta", "Gamma", "Delta")  # Alpha and Gamma in the evaluation set
CHARACTERS = 3
DRAWINGS = 9


def write_tree(root: Path, drawings: int = DRAWINGS) -> None:
    """4 alphabets x 3 characters x ``drawings`` PNGs; character c is a box at a place of its own,
    drawing k shifts it by a pixel or two, so every image differs from every other."""
    labels = {(a, c): i for i, (a, c) in enumerate((a, c) for a in sorted(ALPHABETS) for c in range(CHARACTERS))}
    for a in ALPHABETS:
        image_set = "images_evaluation" if a in ("Alpha", "Gamma") else "images_background"
        for c in range(CHARACTERS):
            folder = root / "omniglot-py" / image_set / a / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            row, col = divmod(labels[a, c], 4)
            for k in range(drawings):
                left, top = 4 + 25 * col + k % 3, 4 + 33 * row + k // 3
                img = Image.new("1", (105, 105), color=1)
                img.paste(0, (left, top, left + 18, top + 18))
                img.save(folder / f"{labels[a, c]:02d}{k:02d}.png")


@pytest.fixture
def tiny_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CL_REPLAY_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "omni"
    write_tree(root)
    return root


def _counts(split: data.Split, classes: int) -> list[int]:
    return torch.bincount(split.y, minlength=classes).tolist()


def _rows(split: data.Split) -> set[bytes]:
    return {row.numpy().tobytes() for row in split.x}


# --------------------------------------------------------------------------- data splits


def test_per_character_split_puts_every_character_in_every_split(tiny_tree: Path) -> None:
    d = load_dataset("omniglot", tiny_tree, binarize_eval=False, download=False, omniglot_split="per_character")
    classes = len(ALPHABETS) * CHARACTERS
    assert d.num_classes == classes
    assert _counts(d.test, classes) == [4] * classes
    assert _counts(d.val, classes) == [2] * classes
    assert _counts(d.train, classes) == [DRAWINGS - 6] * classes
    train, val, test = _rows(d.train), _rows(d.val), _rows(d.test)
    assert len(train) + len(val) + len(test) == classes * DRAWINGS  # every drawing once
    assert not (train & val or train & test or val & test)
    again = load_dataset("omniglot", tiny_tree, binarize_eval=False, download=False, omniglot_split="per_character")
    assert torch.equal(again.test.x, d.test.x) and torch.equal(again.train.y, d.train.y)


def test_static_split_keeps_its_sizes_and_is_stratified(tiny_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = {"test": 30, "val": 7, "train": 68}  # 105 of the 108 drawings
    monkeypatch.setattr(data, "OMNIGLOT_SPLIT_SIZES", sizes)
    d = load_dataset("omniglot", tiny_tree, binarize_eval=False, download=False)
    classes = len(ALPHABETS) * CHARACTERS
    assert [len(d.test), len(d.val), len(d.train)] == list(sizes.values())
    for split, size in ((d.test, 30), (d.val, 7), (d.train, 68)):
        counts = _counts(split, classes)
        # as even as the size allows: floor or ceil of size / classes for every character
        assert set(counts) <= {size // classes, -(-size // classes)}, counts


def test_per_character_split_names_characters_with_too_few_drawings(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CL_REPLAY_CACHE", str(tmp_path / "cache"))
    write_tree(tmp_path / "omni", drawings=6)
    with pytest.raises(DatasetError, match=r"Alpha/character01 \(6\).*at least 7"):
        load_dataset("omniglot", tmp_path / "omni", download=False, omniglot_split="per_character")
    with pytest.raises(DatasetError, match="static, per_character"):
        load_dataset("omniglot", tmp_path / "omni", download=False, omniglot_split="random")


# --------------------------------------------------------------------------- the stream


def _check_stream(root: Path, n_experiences: int, seed: int) -> None:
    test = build_stream("split_omniglot", data_root=root, seed=seed, n_experiences=n_experiences)
    val = build_stream("split_omniglot", data_root=root, seed=seed, n_experiences=n_experiences, eval_split="val")
    assert test.n_experiences == n_experiences and test.experience_classes == val.experience_classes
    class_sets = [set(g) for g in test.experience_classes]
    assert sum(map(len, class_sets)) == len(set().union(*class_sets))  # disjoint across experiences
    for i, classes in enumerate(class_sets):
        train_classes = set(test.train[i].y.unique().tolist())
        assert train_classes == classes
        assert set(test.test[i].y.unique().tolist()) == classes  # every test character is trained on...
        assert set(val.test[i].y.unique().tolist()) == classes  # ...and validated on
        assert set(test.train_stream[i].classes_in_this_experience) == classes


def test_stream_classes_are_disjoint_and_every_test_character_is_trained(tiny_tree: Path) -> None:
    _check_stream(tiny_tree, 3, seed=0)
    _check_stream(tiny_tree, 4, seed=3)
    names = build_stream("split_omniglot", data_root=tiny_tree).experience_names
    assert names == sorted(ALPHABETS)  # seed 0: alphabets in name order


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_both_scenarios_run_end_to_end(tiny_tree: Path, tmp_path: Path, scenario: str) -> None:
    from cl_replay.models import ModelConfig

    torch.set_num_threads(1)
    cl = CLConfig(stream="split_omniglot", generator="cpvae", scenario=scenario, n_experiences=3,
                  data_root=str(tiny_tree), iterations=30, batch_size=16, replay_batch_size=16, fc_units=32,
                  replay_labels="soft", aggregate_samples=100, eval_batch_size=64, grid_samples=10, progress=False,
                  parallel_generator=False, out=str(tmp_path / scenario))
    if scenario == "task":  # with the categories tied to the tasks (gen_tie_to=task)
        cl = replace(cl, gen_label_weight=1.0, gen_tie_to="task")
    model = ModelConfig(model="cpvae", latent_dim=4, hidden=32, categories=6, likelihood="bernoulli")
    results = run_experiment(cl, model, echo=lambda *_: None)
    matrix = torch.tensor(results["accuracy_matrix"])
    assert matrix.shape == (3, 3) and results["scenario"] == scenario
    assert results["experience_names"] == ["Alpha", "Beta", "Delta"]
    assert len(results["per_class_accuracy"]) == 3 * CHARACTERS
    stats = results["generator_stats"]
    assert [s["replay_samples"] for s in stats[:2]] == [0, 30 * 16]
    assert [s["iterations"] for s in stats] == [30, 30, 0]  # nothing replays from a generator trained last
    if scenario == "task":  # 3 characters per task: far above chance (1/3) after training on it
        assert float(matrix[-1, -1]) > 0.6
        assert all("category_label_nll" in s["final_losses"] for s in stats[:2])  # categories tied to the tasks


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (REAL_DATA / "omniglot-py" / "images_evaluation").is_dir(),
                    reason=f"real Omniglot not found under {REAL_DATA} (set CL_REPLAY_TEST_DATA)")
def test_real_split_omniglot_stream() -> None:
    stream = build_stream("split_omniglot", data_root=REAL_DATA, seed=3, n_experiences=3)
    for i, classes in enumerate(stream.experience_classes):
        assert torch.bincount(stream.train[i].y)[classes].tolist() == [14] * len(classes)
        assert torch.bincount(stream.test[i].y)[classes].tolist() == [4] * len(classes)
    _check_stream(REAL_DATA, 3, seed=3)
    full = build_stream("split_omniglot", data_root=REAL_DATA)
    assert full.n_experiences == 50 and full.num_classes == 1623
    assert sum(len(d) for d in full.train) == 22722 and sum(len(d) for d in full.test) == 6492


@pytest.mark.skipif(not (REAL_DATA / "omniglot-py" / "images_evaluation").is_dir(),
                    reason=f"real Omniglot not found under {REAL_DATA} (set CL_REPLAY_TEST_DATA)")
@pytest.mark.parametrize("scenario", ["class", "task"])
def test_real_split_omniglot_run_starts(tmp_path: Path, scenario: str) -> None:
    cl = CLConfig(stream="split_omniglot", generator="none", scenario=scenario, seed=3, n_experiences=3,
                  data_root=str(REAL_DATA), iterations=2, progress=False, out=str(tmp_path / scenario))
    results = run_experiment(cl, echo=lambda *_: None)
    assert len(results["accuracy_matrix"]) == 3 and results["experience_names"][0] == "Mongolian"
