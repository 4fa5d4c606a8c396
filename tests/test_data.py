"""Tests for cl_replay.data: IDX reading, splits, binarisation, Omniglot tree, roots, errors."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from cl_replay import data
from cl_replay.data import DatasetError, binarize, cache_dir, load_dataset, resolve_data_root

N_TRAIN_FILE, N_TEST_FILE, N_TRAIN_SPLIT = 12, 5, 8
IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """Uncompressed IDX encoding of a uint8 array."""
    magic = (0x08 << 8) | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_images(n: int, offset: int) -> np.ndarray:
    """Images whose every pixel of image i equals (offset + i) * 10: identifies the image."""
    return np.broadcast_to(((offset + np.arange(n)) * 10).astype(np.uint8)[:, None, None], (n, 28, 28)).copy()


def fake_labels(n: int, offset: int) -> np.ndarray:
    return ((offset + np.arange(n)) % 10).astype(np.uint8)


def write_idx_files(raw_dir: Path, n_train: int = N_TRAIN_FILE, n_test: int = N_TEST_FILE) -> None:
    """Tiny MNIST: 12 train images (values 0, 10, ..., 110) and 5 test images (120..160) by default."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    arrays = (
        fake_images(n_train, 0),
        fake_labels(n_train, 0),
        fake_images(n_test, n_train),
        fake_labels(n_test, n_train),
    )
    for name, array in zip(IDX_NAMES, arrays):
        (raw_dir / name).write_bytes(gzip.compress(idx_bytes(array)))


def make_read_only(path: Path) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's data / cache folders or environment."""
    for var in ("CL_REPLAY_DATA", "CL_REPLAY_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CL_REPLAY_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if torchvision is asked to download anything."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torchvision download must not be attempted")

    for cls in ("MNIST", "FashionMNIST", "Omniglot"):
        monkeypatch.setattr(torchvision.datasets, cls, forbidden)


@pytest.fixture
def tiny_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    write_idx_files(root / "MNIST" / "raw")
    monkeypatch.setattr(data, "MNIST_TRAIN_SIZE", N_TRAIN_SPLIT)
    return root


# --------------------------------------------------------------------------- MNIST-like


def test_idx_splits_values_and_labels(tiny_mnist: Path, no_download: None) -> None:
    d = load_dataset("mnist", tiny_mnist, binarize_eval=False)
    assert d.name == "mnist" and d.num_classes == 10 and d.class_names == [str(i) for i in range(10)]
    assert d.group_names is None and d.image_shape == (1, 28, 28)
    sizes = [len(s) for s in (d.train, d.val, d.test)]
    assert sizes == [N_TRAIN_SPLIT, N_TRAIN_FILE - N_TRAIN_SPLIT, N_TEST_FILE]
    for split, first in ((d.train, 0), (d.val, N_TRAIN_SPLIT), (d.test, N_TRAIN_FILE)):
        n = len(split)
        assert split.x.dtype == torch.float32 and split.x.shape == (n, 784)
        assert split.y.dtype == torch.int64 and split.groups is None
        expected = (first + torch.arange(n)) * 10 / 255.0
        torch.testing.assert_close(split.x, expected[:, None].expand(n, 784).float())
        assert torch.equal(split.y, (first + torch.arange(n)) % 10)
    assert d.train.x.min() >= 0 and d.test.x.max() <= 1


def test_eval_binarised_reproducibly_train_grey(tiny_mnist: Path, no_download: None) -> None:
    grey = load_dataset("mnist", tiny_mnist, binarize_eval=False)
    a = load_dataset("mnist", tiny_mnist, eval_seed=3)
    b = load_dataset("mnist", tiny_mnist, eval_seed=3)
    c = load_dataset("mnist", tiny_mnist, eval_seed=4)
    assert torch.equal(a.train.x, grey.train.x)
    assert not set(a.train.x.unique().tolist()) <= {0.0, 1.0}
    for part in ("val", "test"):
        xa = getattr(a, part).x
        assert set(xa.unique().tolist()) == {0.0, 1.0} and xa.dtype == torch.float32
        assert torch.equal(xa, getattr(b, part).x)
        assert not torch.equal(xa, getattr(c, part).x)
        assert torch.equal(getattr(a, part).y, getattr(grey, part).y)
    # Binarisation keeps the mean intensity (~0.4 to 0.6 over these pixels).
    torch.testing.assert_close(a.test.x.mean(), grey.test.x.mean(), atol=0.02, rtol=0)


def test_fashion_mnist_shares_the_code_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    write_idx_files(tmp_path / "FashionMNIST" / "raw")
    monkeypatch.setattr(data, "MNIST_TRAIN_SIZE", N_TRAIN_SPLIT)
    d = load_dataset("fashion-mnist", tmp_path)
    assert d.name == "fashion_mnist"
    assert d.class_names[0] == "T-shirt/top" and d.class_names[9] == "Ankle boot"
    assert len(d.train) == N_TRAIN_SPLIT and len(d.test) == N_TEST_FILE


def test_binarize_keeps_dtype_and_is_seeded() -> None:
    x = torch.rand(50, 784, dtype=torch.float64)
    out = binarize(x, torch.Generator().manual_seed(1))
    assert out.dtype == torch.float64 and out.shape == x.shape and set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out, binarize(x, torch.Generator().manual_seed(1)))
    assert torch.equal(binarize(torch.ones(3)), torch.ones(3))
    assert torch.equal(binarize(torch.zeros(3)), torch.zeros(3))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[: len(raw) // 2], "decompress"),  # truncated gzip stream
        (lambda raw: gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(raw)[4:]), "magic"),
        (lambda raw: gzip.compress(gzip.decompress(raw)[:-7]), "data bytes"),  # truncated payload
        (lambda raw: b"not a gzip file at all", "decompress"),
    ],
)
def test_corrupt_idx_file_raises_naming_it(tiny_mnist: Path, no_download: None, damage, message: str) -> None:
    target = tiny_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tiny_mnist)
    assert str(target) in str(info.value) and message in str(info.value)
    assert "delete" in str(info.value).lower()


def test_label_count_mismatch_raises(tiny_mnist: Path, no_download: None) -> None:
    labels = tiny_mnist / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(fake_labels(N_TEST_FILE - 1, 0))))
    with pytest.raises(DatasetError, match="labels for"):
        load_dataset("mnist", tiny_mnist)


def expected_paths(root: Path, folder: str = "MNIST") -> list[str]:
    return [str(root / folder / "raw" / name) for name in IDX_NAMES]


def test_missing_files_without_download(tmp_path: Path, no_download: None) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", root, download=False)
    assert all(p in str(info.value) for p in expected_paths(root))
    assert "CL_REPLAY_DATA" in str(info.value) and "--data-root" in str(info.value)
    assert list(root.iterdir()) == []


def test_read_only_root_is_never_written(tmp_path: Path, no_download: None) -> None:
    root = tmp_path / "readonly"
    root.mkdir()
    make_read_only(root)
    try:
        with pytest.raises(DatasetError, match="read-only") as info:
            load_dataset("fashion_mnist", root, download=True)
        assert all(p in str(info.value) for p in expected_paths(root, "FashionMNIST"))
        with pytest.raises(DatasetError, match="read-only"):
            load_dataset("omniglot", root, download=True)
        assert list(root.iterdir()) == []
    finally:
        root.chmod(stat.S_IRWXU)


def test_download_uses_torchvision_into_writable_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "MNIST_TRAIN_SIZE", N_TRAIN_SPLIT)
    calls = []

    def fake_mnist(root: str, train: bool, download: bool) -> None:
        calls.append((root, download))
        write_idx_files(Path(root) / "MNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    root = tmp_path / "fresh" / "root"  # does not exist yet
    d = load_dataset("mnist", root)
    assert calls == [(str(root), True)] and len(d.test) == N_TEST_FILE


def test_failed_download_lists_expected_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(**kwargs: object) -> None:
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DatasetError, match="no network") as info:
        load_dataset("mnist", tmp_path)
    assert all(p in str(info.value) for p in expected_paths(tmp_path))


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError, match="mnist, fashion_mnist, omniglot"):
        load_dataset("cifar10")


def test_to_moves_every_tensor(tiny_mnist: Path, no_download: None) -> None:
    d = load_dataset("mnist", tiny_mnist).to(torch.device("meta"))
    assert {s.x.device.type for s in (d.train, d.val, d.test)} == {"meta"}
    assert d.train.y.device.type == "meta" and d.name == "mnist"


# --------------------------------------------------------------------------- Omniglot

# (set, alphabet, characters): "Alpha" sorts first although it is in the evaluation set.
OMNIGLOT_LAYOUT = (
    ("images_background", "Beta", ("character01", "character02")),
    ("images_evaluation", "Alpha", ("character01", "character02")),
)
PNGS_PER_CHARACTER = 3
TINY_SPLIT = {"test": 3, "val": 2, "train": 6}  # 11 of the 12 images; one is left out


def stroke_box(label: int) -> tuple[int, int, int, int]:
    """A 30x30 square at a position unique to the character, in 105x105 pixels."""
    row, col = divmod(label, 2)
    return 10 + 50 * col, 10 + 50 * row, 40 + 50 * col, 40 + 50 * row


def write_omniglot_tree(root: Path) -> None:
    """2 alphabets x 2 characters x 3 PNGs: black square strokes on white, 1-bit like the originals."""
    expected_order = sorted((alphabet, c) for _, alphabet, chars in OMNIGLOT_LAYOUT for c in chars)
    for image_set, alphabet, chars in OMNIGLOT_LAYOUT:
        for c in chars:
            folder = root / "omniglot-py" / image_set / alphabet / c
            folder.mkdir(parents=True)
            label = expected_order.index((alphabet, c))
            for k in range(PNGS_PER_CHARACTER):
                img = Image.new("1", (105, 105), color=1)
                img.paste(0, stroke_box(label))
                img.save(folder / f"{label:02d}{k:02d}.png")


def box_centre_pixel(label: int) -> int:
    """Index of the flattened 28x28 pixel at the centre of ``stroke_box(label)``."""
    left, top, right, bottom = stroke_box(label)
    scale = 28 / 105
    return int((top + bottom) / 2 * scale) * 28 + int((left + right) / 2 * scale)


@pytest.fixture
def tiny_omniglot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "omni"
    write_omniglot_tree(root)
    monkeypatch.setattr(data, "OMNIGLOT_SPLIT_SIZES", TINY_SPLIT)
    return root


def test_omniglot_labels_groups_names_inversion(tiny_omniglot: Path, no_download: None) -> None:
    d = load_dataset("omniglot", tiny_omniglot, binarize_eval=False)
    assert d.name == "omniglot" and d.num_classes == 4
    assert d.class_names == ["Alpha/character01", "Alpha/character02", "Beta/character01", "Beta/character02"]
    assert d.group_names == ["Alpha", "Beta"]
    assert [len(s) for s in (d.train, d.val, d.test)] == [6, 2, 3]
    ys = torch.cat([d.train.y, d.val.y, d.test.y])
    assert sorted(torch.bincount(ys, minlength=4).tolist()) == [2, 3, 3, 3]  # one image left out
    for split in (d.train, d.val, d.test):
        assert split.x.dtype == torch.float32 and split.x.shape == (len(split), 784)
        assert split.groups is not None and split.groups.dtype == torch.int64
        assert torch.equal(split.groups, split.y // 2)
        for x, y in zip(split.x, split.y.tolist()):
            assert x[0] == 0.0  # white background -> 0
            assert x[box_centre_pixel(y)] == 1.0  # black stroke of this character -> 1
            others = [box_centre_pixel(k) for k in range(4) if k != y]
            assert x[others].max() == 0.0  # no stroke where the other characters have theirs
    assert not set(d.train.x.unique().tolist()) <= {0.0, 1.0}  # antialiased edges stay grey


def test_omniglot_split_is_deterministic_and_eval_binarised(tiny_omniglot: Path, no_download: None) -> None:
    a = load_dataset("omniglot", tiny_omniglot)
    b = load_dataset("omniglot", tiny_omniglot)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(a, part).x, getattr(b, part).x)
        assert torch.equal(getattr(a, part).y, getattr(b, part).y)
    assert set(a.test.x.unique().tolist()) == {0.0, 1.0}


def test_omniglot_cache_written_reused_and_rebuilt(
    tiny_omniglot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    first = load_dataset("omniglot", tiny_omniglot, binarize_eval=False)
    cache_files = list((tmp_path / "cache").glob("omniglot28-*.pt"))
    assert len(cache_files) == 1 and cache_files[0].parent == cache_dir()
    assert not list(tiny_omniglot.rglob("*.pt"))  # nothing cached inside the data root

    real_decode = data._decode_png

    def must_not_decode(path: Path) -> torch.Tensor:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(data, "_decode_png", must_not_decode)
    cached = load_dataset("omniglot", tiny_omniglot, binarize_eval=False)
    assert torch.equal(cached.train.x, first.train.x) and torch.equal(cached.test.groups, first.test.groups)
    assert cached.class_names == first.class_names

    cache_files[0].write_bytes(b"garbage")
    monkeypatch.setattr(data, "_decode_png", real_decode)
    with pytest.warns(UserWarning, match="invalid Omniglot cache"):
        rebuilt = load_dataset("omniglot", tiny_omniglot, binarize_eval=False)
    assert torch.equal(rebuilt.train.x, first.train.x)
    assert torch.load(cache_files[0], weights_only=True)["x"].dtype == torch.uint8


def test_omniglot_undecodable_png_named(tiny_omniglot: Path, no_download: None) -> None:
    bad = tiny_omniglot / "omniglot-py" / "images_background" / "Beta" / "character02" / "0300.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="0300.png") as info:
        load_dataset("omniglot", tiny_omniglot)
    assert str(bad) in str(info.value)


def test_omniglot_missing_tree_names_folders(tmp_path: Path, no_download: None) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("omniglot", tmp_path, download=False)
    for image_set in ("images_background", "images_evaluation"):
        assert str(tmp_path / "omniglot-py" / image_set) in str(info.value)


def test_omniglot_too_few_images(
    tiny_omniglot: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    monkeypatch.setattr(data, "OMNIGLOT_SPLIT_SIZES", {"test": 8070, "val": 1345, "train": 23000})
    with pytest.raises(DatasetError, match="needs 32415"):
        load_dataset("omniglot", tiny_omniglot)


# --------------------------------------------------------------------------- roots


def test_resolve_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_root(None) == tmp_path / "xdg" / "cl-replay" / "data"
    monkeypatch.setenv("CL_REPLAY_DATA", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_resolve_data_root_defaults_to_home_cache(tmp_path: Path) -> None:
    assert resolve_data_root(None) == (tmp_path / "home" / ".cache" / "cl-replay" / "data").resolve()


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir() == tmp_path / "cache"  # CL_REPLAY_CACHE, set by the autouse fixture
    monkeypatch.delenv("CL_REPLAY_CACHE")
    assert cache_dir() == tmp_path / "home" / ".cache" / "cl-replay"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cl-replay"


# --------------------------------------------------------------------------- real data


def real_data_root() -> Path:
    env = os.environ.get("CL_REPLAY_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.skipif(not (real_data_root() / "MNIST" / "raw").is_dir(), reason="real datasets not available")
def test_real_mnist(no_download: None) -> None:
    d = load_dataset("mnist", real_data_root(), download=False)
    assert (len(d.train), len(d.val), len(d.test)) == (50000, 10000, 10000)
    assert d.train.y[0] == 5
    assert d.train.x.min() == 0 and d.train.x.max() == 1
    assert set(d.test.x.unique().tolist()) == {0.0, 1.0}
