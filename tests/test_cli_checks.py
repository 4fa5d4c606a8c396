"""Bad input is refused before any work: quickly (no torch, Avalanche or torchvision import), with
exit status 2, no traceback and nothing written. The name lists of ``checks`` are the registries'."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cl_replay import checks
from cl_replay.config import packaged_config

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from cl_replay.cli import main; main(sys.argv[1:])"

REFUSALS = [
    (["pretrain", "--model", "nosuch", "--dataset", "mnist"], "unknown model 'nosuch'"),
    (["pretrain", "--dataset", "cifar10"], "unknown dataset"),
    (["pretrain", "--epochs", "-3"], "epochs must be positive"),
    (["pretrain", "--batch-size", "0"], "batch_size must be positive"),
    (["pretrain", "--config", "nosuch.yaml"], "config file not found"),
    (["pretrain", "--device", "tpu"], "unknown device"),
    (["pretrain", "--resume", "."], "nothing to continue"),
    (["run", "split_cifar"], "unknown stream"),
    (["run", "split_mnist", "--generator", "gan"], "unknown generator 'gan'"),
    (["run", "split_mnist", "--scenario", "domain"], "unknown scenario"),
    (["run", "split_mnist", "--iterations", "0"], "iterations must be positive"),
    (["run", "split_mnist", "--set", "replay_batch_size=-5"], "replay_batch_size must be positive"),
    (["run", "split_mnist", "--set", "itterations=3"], "did you mean 'iterations'"),
    (["run", "split_mnist", "--set", "hidden_layer=tanh"], "unknown hidden_layer 'tanh'"),
    (["run"], "missing STREAM"),
]


def cli(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    return result, time.perf_counter() - started


@pytest.mark.parametrize("args, message", REFUSALS)
def test_refusals_are_quick_clean_and_leave_nothing(tmp_path, args, message):
    result, seconds = cli(args, tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert seconds < 2.0, f"{seconds:.2f} s"
    assert list(tmp_path.iterdir()) == []


def test_cuda_on_a_machine_without_a_gpu_and_an_unwritable_or_used_out(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cl_replay.cli import main

    monkeypatch.setattr(checks, "_cuda_absent", lambda: True)
    for command in (["pretrain"], ["run", "split_mnist"]):
        result = CliRunner().invoke(main, [*command, "--device", "cuda"])
        assert result.exit_code == 2 and "no CUDA GPU" in result.output
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = CliRunner().invoke(main, ["pretrain", "--out", str(locked / "run")])
        assert result.exit_code == 2 and "not writable" in result.output
    finally:
        locked.chmod(0o755)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "config.yaml").write_text("model: vae\n")
    result = CliRunner().invoke(main, ["run", "split_mnist", "--out", str(tmp_path / "used")])
    assert result.exit_code == 2 and "already holds a run" in result.output


def test_help_imports_no_heavy_library(tmp_path):
    code = ("import sys; from cl_replay.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'torchvision', 'avalanche') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]" and result.stderr == ""


def test_name_lists_are_the_registries():
    from cl_replay.data import DATASETS
    from cl_replay.models import MODELS
    from strategies.streams import SCENARIOS, STREAMS

    assert set(checks.MODELS) == set(MODELS)
    assert checks.DATASETS == DATASETS and checks.SCENARIOS == SCENARIOS
    assert checks.STREAMS == tuple(STREAMS)


def test_packaged_configs_are_the_configs_folder():
    """``setup.py`` installs configs/ as the package ``cl_replay.configs``: one copy of every file."""
    files = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").glob("*/*.yaml"))
    assert files and all(packaged_config(str(f)).read_text() == (ROOT / "configs" / f).read_text() for f in files)
