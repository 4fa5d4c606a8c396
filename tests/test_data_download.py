"""Downloads without a network: a local HTTP server on 127.0.0.1 serves tiny IDX files and
torchvision's mirrors point at it; ``cl-replay data`` lists, downloads and reports failures."""
from __future__ import annotations

import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torchvision.datasets
from click.testing import CliRunner

from cl_replay import data
from cl_replay.cli import main
from cl_replay.data import DatasetError, dataset_status, load_dataset
from test_data import IDX_NAMES, N_TEST_FILE, N_TRAIN_SPLIT, write_idx_files


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local mirror serving tiny MNIST and Fashion-MNIST IDX files; torchvision downloads from it."""
    served = tmp_path / "served"
    write_idx_files(served)
    md5 = [(name, hashlib.md5((served / name).read_bytes()).hexdigest()) for name in IDX_NAMES]
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1")
    for cls in (torchvision.datasets.MNIST, torchvision.datasets.FashionMNIST):
        monkeypatch.setattr(cls, "mirrors", [url])
        monkeypatch.setattr(cls, "resources", md5)
    monkeypatch.setattr(torchvision.datasets.Omniglot, "download_url_prefix", url + "omniglot")  # 404
    monkeypatch.setattr(data, "MNIST_TRAIN_SIZE", N_TRAIN_SPLIT)
    for var in ("CL_REPLAY_DATA", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield url
    server.shutdown()


def test_missing_mnist_is_downloaded_from_the_mirror(tmp_path: Path, mirror: str) -> None:
    root = tmp_path / "new" / "root"
    splits = load_dataset("mnist", root)
    assert len(splits.test) == N_TEST_FILE
    assert all((root / "MNIST" / "raw" / name).is_file() for name in IDX_NAMES)


def test_no_download_and_failed_download_say_so_and_leave_no_folders(tmp_path: Path, mirror: str) -> None:
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="downloading is off"):
        load_dataset("mnist", root, download=False)
    with pytest.raises(DatasetError, match="a download was tried and failed") as info:
        load_dataset("omniglot", root)
    assert "images_background" in str(info.value) and "404" in str(info.value)
    assert not root.exists()


def test_data_command_lists_downloads_and_reports(tmp_path: Path, mirror: str) -> None:
    root = tmp_path / "root"
    write_idx_files(root / "FashionMNIST" / "raw")
    (root / "FashionMNIST" / "raw" / IDX_NAMES[0]).write_bytes(b"not gzip")
    listing = CliRunner().invoke(main, ["data", "--data-root", str(root)])
    assert listing.exit_code == 0, listing.output
    states = {line.split()[0]: line.split()[1] for line in listing.output.splitlines()[1:]}
    assert states == {"mnist": "missing", "fashion_mnist": "corrupt", "omniglot": "missing"}

    fetched = CliRunner().invoke(main, ["data", "--data-root", str(root), "--download"])
    assert fetched.exit_code == 1
    assert "mnist          present" in fetched.output and "a download was tried and failed" in fetched.output
    assert dataset_status("mnist", root)[0] == "present" and dataset_status("fashion_mnist", root)[0] == "corrupt"
