"""Datasets for cl-replay: MNIST, Fashion-MNIST and a 28x28 Omniglot.

Every dataset comes back as a :class:`DataSplits` of flattened ``float32`` images of
shape ``(N, 784)`` with intensities in ``[0, 1]``, following the protocol of the
VampPrior / CP-VAE papers:

* **MNIST, Fashion-MNIST.** Read straight from torchvision's raw IDX gz files
  (``<root>/MNIST/raw/*.gz``, ``<root>/FashionMNIST/raw/*.gz``). Train = the first
  50000 images of the official training set, validation = its last 10000, test = the
  official 10000 test images. Intensities are ``pixel / 255``.
* **Omniglot (stand-in for ``chardata.mat``).** The 28x28 Omniglot of the VAE
  literature (``chardata.mat``, split 23000 / 1345 / 8070) is not distributed with
  torchvision. This module builds a substitute from torchvision's 105x105 PNG tree
  (``<root>/omniglot-py/images_background`` and ``images_evaluation``, 32460 images
  of 1623 characters in 50 alphabets, 20 drawings each): each PNG is inverted
  (stroke = 1, background = 0), resized to 28x28 with bilinear antialiasing and
  flattened. Labels are global character indices (0..1622; alphabets sorted by name
  across both sets, characters by folder name), ``groups`` are alphabet indices
  (0..49). Both splits are stratified by character, drawn with a ``torch.Generator``
  seeded with 0 (:data:`OMNIGLOT_SPLIT_SEED`) that first shuffles the drawings of
  every character:

  - ``omniglot_split="static"`` (the default, for static training): chardata.mat's
    sizes, 8070 test, 1345 validation, 23000 training images, 45 left out. Images are
    ordered by the key (r + u_c) / n_c (r: rank of the drawing within its shuffled
    character, n_c: the character's drawings, u_c ~ U[0, 1) one offset per character)
    and cut in that order, so every split holds each character as evenly as its size
    allows: 4 or 5 test drawings per character, 0 or 1 validation drawing, 14 or 15
    training drawings.
  - ``omniglot_split="per_character"`` (the continual-learning streams): of every
    character, 4 drawings for test, 2 for validation and the rest (14) for training
    (:data:`OMNIGLOT_PER_CHARACTER`), so every character is in all three splits
    (6492 / 3246 / 22722 images).

  Numbers obtained on this set are not directly comparable with results reported on
  chardata.mat. The decoded images (quantised to ``uint8``) are cached in
  ``cache_dir()/omniglot28-<hash of the root path>.pt``, never in the data root.

The training split always stays grey: the trainer binarises every batch afresh
("dynamic binarisation", see :func:`binarize`). The validation and test splits are
binarised once, with a ``torch.Generator`` seeded with ``eval_seed``, unless
``binarize_eval=False`` (continual learning keeps them grey).

The data root is resolved by :func:`resolve_data_root`. A root whose directory is
read-only (no write permission bit, or not writable by this process) is never
written to, even when running as root; missing MNIST / Fashion-MNIST files are
downloaded with torchvision only into writable roots.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision.datasets
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from tqdm import tqdm

from .checks import DATASETS
from .checks import is_writable as _is_writable

__all__ = [
    "DATASETS",
    "DataSplits",
    "DatasetError",
    "Split",
    "binarize",
    "cache_dir",
    "dataset_status",
    "download_dataset",
    "load_dataset",
    "resolve_data_root",
]

IMAGE_SIZE = 28
"""Side of the square images every dataset is delivered at."""

MNIST_TRAIN_SIZE = 50000
"""MNIST / Fashion-MNIST: leading images of the official training set used for training
(the rest is the validation split)."""

OMNIGLOT_SPLIT_SIZES: dict[str, int] = {"test": 8070, "val": 1345, "train": 23000}
"""Omniglot ``static`` split sizes (chardata.mat's), in the order they are cut from the
character-stratified order."""

OMNIGLOT_PER_CHARACTER: dict[str, int] = {"test": 4, "val": 2}
"""Omniglot ``per_character`` split: drawings of every character for test and validation;
the rest of the character's drawings are for training."""

OMNIGLOT_SPLITS = ("static", "per_character")
"""Values of ``load_dataset(..., omniglot_split=...)``."""

OMNIGLOT_SPLIT_SEED = 0
"""Seed of the shuffles that split Omniglot."""

_OMNIGLOT_SETS = ("images_background", "images_evaluation")
_OMNIGLOT_CACHE_VERSION = 1
_IDX_LABEL_MAGIC = 0x00000801
_IDX_IMAGE_MAGIC = 0x00000803


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or cannot be fetched; the message says how to fix it."""


@dataclass
class Split:
    """One split of a dataset, flattened.

    Attributes:
        x: ``float32`` images of shape ``(N, 784)`` with intensities in ``[0, 1]``.
        y: ``int64`` class labels of shape ``(N,)``.
        groups: Omniglot only: ``int64`` alphabet indices of shape ``(N,)``; ``None`` otherwise.
    """

    x: torch.Tensor
    y: torch.Tensor
    groups: torch.Tensor | None = None

    def __len__(self) -> int:
        """Number of examples."""
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> Split:
        """Return a copy with every tensor moved to ``device``."""
        groups = None if self.groups is None else self.groups.to(device)
        return Split(self.x.to(device), self.y.to(device), groups)


@dataclass
class DataSplits:
    """Train / validation / test splits of one dataset plus its metadata.

    Attributes:
        name: Dataset name, one of :data:`DATASETS`.
        train: Training split (grey, never binarised).
        val: Validation split (binarised once unless ``binarize_eval=False``).
        test: Test split (binarised once unless ``binarize_eval=False``).
        num_classes: Number of classes (10, or 1623 for Omniglot).
        class_names: Name of every class, indexed by label.
        group_names: Omniglot only: alphabet names, indexed by group; ``None`` otherwise.
        image_shape: ``(channels, height, width)`` of one unflattened image.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str]
    group_names: list[str] | None = None
    image_shape: tuple[int, int, int] = (1, IMAGE_SIZE, IMAGE_SIZE)

    def to(self, device: torch.device | str) -> DataSplits:
        """Return a copy with every split moved to ``device``."""
        return replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


@dataclass(frozen=True)
class _IdxDataset:
    """Where an MNIST-like dataset lives and how torchvision fetches it."""

    folder: str  # torchvision's folder under the root, also its dataset class name
    class_names: tuple[str, ...]

    def raw_dir(self, root: Path) -> Path:
        """Folder holding the IDX gz files under ``root``."""
        return root / self.folder / "raw"

    def files(self, root: Path) -> list[Path]:
        """The four IDX gz files expected under ``root``."""
        return [self.raw_dir(root) / f for pair in _IDX_FILES.values() for f in pair]


_IDX_DATASETS: dict[str, _IdxDataset] = {
    "mnist": _IdxDataset("MNIST", tuple(str(d) for d in range(10))),
    "fashion_mnist": _IdxDataset(
        "FashionMNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# --------------------------------------------------------------------------- paths


def _user_cache_home() -> Path:
    """``$XDG_CACHE_HOME`` if set to an absolute path, else ``~/.cache``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"


def cache_dir() -> Path:
    """User cache folder for derived files such as the decoded Omniglot.

    ``$CL_REPLAY_CACHE`` if set, else ``<user cache>/cl-replay`` where the user cache
    is ``$XDG_CACHE_HOME`` or ``~/.cache``. The folder is not created here.
    """
    override = os.environ.get("CL_REPLAY_CACHE", "")
    if override:
        return Path(override).expanduser().resolve()
    return _user_cache_home() / "cl-replay"


def resolve_data_root(data_root: str | os.PathLike[str] | None) -> Path:
    """Absolute data root: ``data_root`` if given, else ``$CL_REPLAY_DATA``, else the
    user cache folder ``<user cache>/cl-replay/data`` (``$XDG_CACHE_HOME`` or ``~/.cache``).
    """
    chosen = data_root if data_root is not None else os.environ.get("CL_REPLAY_DATA", "")
    if not chosen:
        chosen = _user_cache_home() / "cl-replay" / "data"
    return Path(chosen).expanduser().resolve()


def _download(fetch: Callable[[], None], root: Path, folders: list[Path], allowed: bool,
              missing_error: Callable[[str], DatasetError]) -> None:
    """Run ``fetch`` (a torchvision download into ``root``, with its progress bar) if ``allowed`` and
    the root is writable, else raise ``missing_error(reason)``. A failed download leaves behind no
    folder it created empty (``folders``, deepest first, then ``root`` and its new parents)."""
    if not allowed:
        raise missing_error("downloading is off: --no-download, or download: false in the config")
    if not _is_writable(root):
        raise missing_error("the root is read-only, so no download was tried")
    new_folders = [d for d in [*folders, root, *root.parents] if not d.exists()]
    try:
        fetch()
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, ... when offline
        for d in new_folders:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise missing_error(f"a download was tried and failed: {' '.join(str(e).split())}") from e


_POINT_AT_DATA = "point --data-root (data_root=...) or CL_REPLAY_DATA at a folder that has them."


# --------------------------------------------------------------------------- binarisation


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample binary images: each value becomes 1 with probability equal to the intensity.

    Args:
        x: Intensities in ``[0, 1]``, any shape, floating dtype.
        generator: Random generator on ``x``'s device; the global one if ``None``.

    Returns:
        A tensor of zeros and ones with ``x``'s shape, dtype and device.
    """
    return torch.bernoulli(x, generator=generator)


def _eval_splits(val: Split, test: Split, binarize_eval: bool, eval_seed: int) -> tuple[Split, Split]:
    """Binarise validation then test once with one generator seeded ``eval_seed`` (if asked)."""
    if not binarize_eval:
        return val, test
    generator = torch.Generator().manual_seed(eval_seed)
    return replace(val, x=binarize(val.x, generator)), replace(test, x=binarize(test.x, generator))


# --------------------------------------------------------------------------- IDX (MNIST-like)


def _corrupt(path: Path, problem: str) -> DatasetError:
    """Error for a damaged data file."""
    return DatasetError(
        f"{path} is corrupt or truncated ({problem}). Delete it and download it again "
        "(load_dataset(..., download=True) fetches missing files into a writable root)."
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one gzip-compressed IDX file of unsigned bytes, validating its header and size.

    Args:
        path: The ``.gz`` file.
        magic: Expected magic number (``0x801`` labels, ``0x803`` images).

    Returns:
        A ``uint8`` array with the dimensions given in the header.

    Raises:
        DatasetError: The file cannot be decompressed or its header / size is wrong.
    """
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise _corrupt(path, f"cannot decompress: {e}") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, f"{len(data)} bytes, shorter than its {header}-byte header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise _corrupt(path, f"magic number {found:#010x}, expected {magic:#010x}")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != header + int(np.prod(dims)):
        raise _corrupt(path, f"{len(data) - header} data bytes for dimensions {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx_pair(raw_dir: Path, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 784)`` float in ``[0, 1]`` and labels ``(N,)`` int64 of ``train`` or ``test``."""
    image_file, label_file = (raw_dir / f for f in _IDX_FILES[part])
    images = _read_idx(image_file, _IDX_IMAGE_MAGIC)
    labels = _read_idx(label_file, _IDX_LABEL_MAGIC)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise _corrupt(image_file, f"images of {images.shape[1:]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if len(images) != len(labels):
        raise _corrupt(label_file, f"{len(labels)} labels for {len(images)} images in {image_file.name}")
    if labels.size and labels.max() > 9:
        raise _corrupt(label_file, f"label {labels.max()} outside 0..9")
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def _missing_idx_error(spec: _IdxDataset, root: Path, reason: str) -> DatasetError:
    """Error listing every expected IDX file of ``spec`` under ``root``."""
    listing = "\n".join(f"  {f}{'' if f.is_file() else '   (missing)'}" for f in spec.files(root))
    return DatasetError(
        f"{spec.folder} not found under {root} ({reason}). Expected these files:\n{listing}\n"
        f"Copy the four standard IDX .gz files there (torchvision's layout), or "
        f"{_POINT_AT_DATA}"
    )


def _ensure_idx_files(spec: _IdxDataset, root: Path, download: bool) -> None:
    """Make sure the four IDX files exist, downloading them with torchvision if allowed."""
    if all(f.is_file() for f in spec.files(root)):
        return
    _download(
        lambda: getattr(torchvision.datasets, spec.folder)(root=str(root), train=True, download=True),
        root, [spec.raw_dir(root), root / spec.folder], download,
        lambda reason: _missing_idx_error(spec, root, reason),
    )
    if not all(f.is_file() for f in spec.files(root)):
        raise _missing_idx_error(spec, root, "a download ran but did not produce them")


def _load_idx_dataset(name: str, root: Path, download: bool) -> tuple[Split, Split, Split]:
    """Grey train / val / test splits of MNIST or Fashion-MNIST."""
    spec = _IDX_DATASETS[name]
    _ensure_idx_files(spec, root, download)
    raw_dir = spec.raw_dir(root)
    x, y = _read_idx_pair(raw_dir, "train")
    if len(x) <= MNIST_TRAIN_SIZE:
        raise _corrupt(
            raw_dir / _IDX_FILES["train"][0],
            f"{len(x)} training images, need more than {MNIST_TRAIN_SIZE} to cut a validation split",
        )
    x_test, y_test = _read_idx_pair(raw_dir, "test")
    n = MNIST_TRAIN_SIZE
    return Split(x[:n], y[:n]), Split(x[n:], y[n:]), Split(x_test, y_test)


# --------------------------------------------------------------------------- Omniglot


@dataclass
class _OmniglotImages:
    """All decoded Omniglot images in canonical order, as stored in the cache."""

    x: torch.Tensor  # uint8 (N, 784), stroke = 255
    y: torch.Tensor  # int64 (N,) character index
    groups: torch.Tensor  # int64 (N,) alphabet index
    class_names: list[str]
    group_names: list[str]


def _omniglot_set_dirs(root: Path) -> list[Path]:
    """The two Omniglot image folders under ``root``."""
    return [root / "omniglot-py" / s for s in _OMNIGLOT_SETS]


def _missing_omniglot_error(root: Path, reason: str) -> DatasetError:
    """Error naming the Omniglot folders expected under ``root``."""
    listing = "\n".join(
        f"  {d}{'' if d.is_dir() else '   (missing)'}" for d in _omniglot_set_dirs(root)
    )
    return DatasetError(
        f"Omniglot not found under {root} ({reason}). Expected torchvision's extracted tree:\n"
        f"{listing}\neach holding <Alphabet>/characterNN/*.png. Extract images_background.zip and "
        f"images_evaluation.zip into {root / 'omniglot-py'}, or "
        f"{_POINT_AT_DATA}"
    )


def _ensure_omniglot_tree(root: Path, download: bool) -> None:
    """Make sure both Omniglot folders exist, downloading them with torchvision if allowed."""
    missing = [d for d in _omniglot_set_dirs(root) if not d.is_dir()]
    if not missing:
        return

    def fetch() -> None:
        for d in missing:
            torchvision.datasets.Omniglot(root=str(root), background=d.name == _OMNIGLOT_SETS[0], download=True)

    _download(fetch, root, [root / "omniglot-py"], download, lambda reason: _missing_omniglot_error(root, reason))
    if any(not d.is_dir() for d in missing):
        raise _missing_omniglot_error(root, "a download ran but did not produce them")


def _omniglot_characters(root: Path) -> list[tuple[str, Path]]:
    """``(alphabet, character folder)`` pairs of both sets, alphabets sorted by name
    across the sets and characters by folder name."""
    alphabets = sorted(
        (a.name, a) for d in _omniglot_set_dirs(root) for a in d.iterdir() if a.is_dir()
    )
    names = [name for name, _ in alphabets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(
            f"Omniglot alphabets {duplicates} appear in both sets under {root / 'omniglot-py'}; "
            "remove the duplicates."
        )
    return [
        (name, c) for name, a in alphabets for c in sorted(a.iterdir(), key=lambda p: p.name) if c.is_dir()
    ]


def _class_names(characters: list[tuple[str, Path]]) -> list[str]:
    """``"Alphabet/characterNN"`` for every character folder."""
    return [f"{alphabet}/{c.name}" for alphabet, c in characters]


def _decode_png(path: Path) -> torch.Tensor:
    """One Omniglot PNG as ``uint8`` (784,), inverted so the stroke is 255, resized to 28x28."""
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L"), dtype=np.float32)
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"Cannot decode Omniglot image {path} ({e}); replace or re-extract it.") from e
    stroke = torch.from_numpy(1.0 - pixels / 255.0)[None]
    small = TF.resize(
        stroke, [IMAGE_SIZE, IMAGE_SIZE], interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    return (small.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).flatten()


def _decode_omniglot(root: Path, characters: list[tuple[str, Path]]) -> _OmniglotImages:
    """Decode every PNG of ``characters`` found under ``root`` (slow: tens of seconds for the full set)."""
    group_names = sorted({alphabet for alphabet, _ in characters})
    group_of = {name: i for i, name in enumerate(group_names)}
    images, labels, groups = [], [], []
    files = [sorted(c.glob("*.png")) for _, c in characters]
    with tqdm(total=sum(map(len, files)), desc="Decoding Omniglot", unit="img") as progress:
        for label, ((alphabet, _), pngs) in enumerate(zip(characters, files)):
            images.extend(_decode_png(p) for p in pngs)
            labels.extend([label] * len(pngs))
            groups.extend([group_of[alphabet]] * len(pngs))
            progress.update(len(pngs))
    if not images:
        raise _missing_omniglot_error(root, "the folders hold no <Alphabet>/characterNN/*.png files")
    return _OmniglotImages(
        x=torch.stack(images),
        y=torch.tensor(labels, dtype=torch.int64),
        groups=torch.tensor(groups, dtype=torch.int64),
        class_names=_class_names(characters),
        group_names=group_names,
    )


def _omniglot_cache_file(root: Path) -> Path:
    """Cache file of the decoded Omniglot found under ``root``."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / f"omniglot28-{digest}.pt"


def _read_omniglot_cache(path: Path, class_names: list[str]) -> _OmniglotImages | None:
    """The cached images if ``path`` holds a valid cache for ``class_names``, else ``None``."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        images = _OmniglotImages(**{k: blob[k] for k in _OmniglotImages.__dataclass_fields__})
        valid = (
            blob["version"] == _OMNIGLOT_CACHE_VERSION
            and images.class_names == class_names
            and images.x.dtype == torch.uint8
            and images.x.shape[1:] == (IMAGE_SIZE * IMAGE_SIZE,)
            and images.y.shape == images.groups.shape == images.x.shape[:1]
        )
    except Exception:  # any unreadable or malformed cache is simply rebuilt
        valid = False
    if not valid:
        warnings.warn(f"Ignoring invalid Omniglot cache {path}; rebuilding it.", stacklevel=3)
        return None
    return images


def _write_omniglot_cache(path: Path, images: _OmniglotImages) -> None:
    """Store ``images`` at ``path`` atomically; warn (do not fail) if that is impossible."""
    blob = {"version": _OMNIGLOT_CACHE_VERSION, **vars(images)}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(
            f"Could not write the Omniglot cache {path} ({e}); it will be decoded again next time.",
            stacklevel=3,
        )


def _omniglot_images(root: Path, download: bool) -> _OmniglotImages:
    """All Omniglot images under ``root``, from the cache when it is valid."""
    _ensure_omniglot_tree(root, download)
    characters = _omniglot_characters(root)
    cache = _omniglot_cache_file(root)
    images = _read_omniglot_cache(cache, _class_names(characters))
    if images is None:
        images = _decode_omniglot(root, characters)
        _write_omniglot_cache(cache, images)
    return images


def _ranks_within_class(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For every image, its position 0..n_c-1 among the images of its class after a seeded shuffle."""
    shuffled = torch.randperm(len(labels), generator=generator)
    by_class = shuffled[torch.argsort(labels[shuffled], stable=True)]  # classes in order, shuffled within
    first = torch.searchsorted(labels[by_class], labels[by_class])  # where each image's class starts
    ranks = torch.empty_like(labels)
    ranks[by_class] = torch.arange(len(labels)) - first
    return ranks


def _static_split_parts(images: _OmniglotImages, ranks: torch.Tensor, generator: torch.Generator
                        ) -> dict[str, torch.Tensor]:
    """Indices of the ``static`` splits: cut the order of (rank + u_c) / n_c by :data:`OMNIGLOT_SPLIT_SIZES`."""
    needed = sum(OMNIGLOT_SPLIT_SIZES.values())
    if len(images.x) < needed:
        raise DatasetError(
            f"Omniglot has {len(images.x)} images, the split needs {needed}; is the tree complete?"
        )
    sizes = torch.bincount(images.y).double()
    offsets = torch.rand(len(sizes), generator=generator, dtype=torch.float64)
    order = torch.argsort((ranks + offsets[images.y]) / sizes[images.y])
    parts, start = {}, 0
    for part, size in OMNIGLOT_SPLIT_SIZES.items():
        parts[part] = order[start: start + size]
        start += size
    return parts


def _per_character_split_parts(images: _OmniglotImages, ranks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Indices of the ``per_character`` splits: the first drawings of every shuffled character for
    test, the next for validation (:data:`OMNIGLOT_PER_CHARACTER`), the rest for training."""
    n_test, n_val = OMNIGLOT_PER_CHARACTER["test"], OMNIGLOT_PER_CHARACTER["val"]
    sizes = torch.bincount(images.y)
    short = (sizes <= n_test + n_val).nonzero().flatten().tolist()
    if short:
        names = [f"{images.class_names[c]} ({int(sizes[c])})" for c in short[:5]]
        raise DatasetError(
            f"Omniglot characters {', '.join(names)}{', ...' if len(short) > 5 else ''} have too few "
            f"drawings: the per-character split needs at least {n_test + n_val + 1} of each "
            f"({n_test} test, {n_val} validation, the rest training); is the tree complete?"
        )
    return {
        "test": (ranks < n_test).nonzero().flatten(),
        "val": ((ranks >= n_test) & (ranks < n_test + n_val)).nonzero().flatten(),
        "train": (ranks >= n_test + n_val).nonzero().flatten(),
    }


def _split_omniglot(images: _OmniglotImages, omniglot_split: str) -> dict[str, Split]:
    """Character-stratified ``static`` or ``per_character`` splits (see the module docstring)."""
    generator = torch.Generator().manual_seed(OMNIGLOT_SPLIT_SEED)
    ranks = _ranks_within_class(images.y, generator)
    if omniglot_split == "static":
        parts = _static_split_parts(images, ranks, generator)
    else:
        parts = _per_character_split_parts(images, ranks)
    return {
        part: Split(images.x[idx].float() / 255.0, images.y[idx], images.groups[idx])
        for part, idx in parts.items()
    }


# --------------------------------------------------------------------------- entry point


def load_dataset(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    binarize_eval: bool = True,
    eval_seed: int = 0,
    download: bool = True,
    omniglot_split: str = "static",
) -> DataSplits:
    """Load one dataset with the train / val / test protocol described in the module docstring.

    Args:
        name: One of :data:`DATASETS` (``"fashion-mnist"`` is accepted too).
        data_root: Data root; see :func:`resolve_data_root`.
        binarize_eval: Binarise validation and test once (train always stays grey).
        eval_seed: Seed of the generator used for that binarisation.
        download: Fetch missing files with torchvision when the root is writable.
        omniglot_split: Omniglot only: ``static`` (chardata.mat's sizes) or ``per_character``
            (4 test, 2 validation, the rest training of every character); both stratified by
            character, see the module docstring.

    Returns:
        The splits on the CPU.

    Raises:
        DatasetError: Unknown name, or missing / corrupt / undownloadable data.
    """
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    if omniglot_split not in OMNIGLOT_SPLITS:
        raise DatasetError(
            f"Unknown omniglot_split {omniglot_split!r}; choose one of {', '.join(OMNIGLOT_SPLITS)}."
        )
    root = resolve_data_root(data_root)
    if key == "omniglot":
        images = _omniglot_images(root, download)
        parts = _split_omniglot(images, omniglot_split)
        train, val, test = parts["train"], parts["val"], parts["test"]
        class_names, group_names = images.class_names, images.group_names
    else:
        train, val, test = _load_idx_dataset(key, root, download)
        class_names, group_names = list(_IDX_DATASETS[key].class_names), None
    val, test = _eval_splits(val, test, binarize_eval, eval_seed)
    return DataSplits(
        name=key,
        train=train,
        val=val,
        test=test,
        num_classes=len(class_names),
        class_names=class_names,
        group_names=group_names,
    )


# --------------------------------------------------------------------------- availability

OMNIGLOT_IMAGES = 32460
"""Drawings in torchvision's two Omniglot folders together."""


def dataset_status(name: str, data_root: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """``(state, detail)`` of dataset ``name`` under the data root: ``present`` (the files are
    readable: IDX headers and sizes check out; Omniglot holds all its drawings), ``missing`` (the
    detail lists what is absent) or ``corrupt`` (the detail says what is wrong)."""
    root = resolve_data_root(data_root)
    if name == "omniglot":
        absent = [d for d in _omniglot_set_dirs(root) if not d.is_dir()]
        if absent:
            return "missing", ", ".join(map(str, absent))
        drawings = sum(1 for d in _omniglot_set_dirs(root) for _ in d.glob("*/*/*.png"))
        if drawings != OMNIGLOT_IMAGES:
            return "corrupt", f"{drawings} drawings under {root / 'omniglot-py'}, expected {OMNIGLOT_IMAGES}"
        return "present", f"{drawings} drawings under {root / 'omniglot-py'}"
    spec = _IDX_DATASETS[name]
    absent = [f for f in spec.files(root) if not f.is_file()]
    if absent:
        return "missing", ", ".join(map(str, absent))
    try:
        sizes = {part: len(_read_idx_pair(spec.raw_dir(root), part)[1]) for part in _IDX_FILES}
    except DatasetError as error:
        return "corrupt", str(error)
    return "present", f"{sizes['train']} training and {sizes['test']} test images in {spec.raw_dir(root)}"


def download_dataset(name: str, data_root: str | os.PathLike[str] | None = None) -> None:
    """Fetch dataset ``name`` into the data root with torchvision if it is missing there."""
    root = resolve_data_root(data_root)
    if name == "omniglot":
        _ensure_omniglot_tree(root, download=True)
    else:
        _ensure_idx_files(_IDX_DATASETS[name], root, download=True)
