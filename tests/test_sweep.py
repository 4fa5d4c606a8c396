"""``cl-replay sweep``: cells as Ray tasks on a local Ray with 2 workers, restart semantics, refusals."""
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import ray
import yaml
from click.testing import CliRunner

from cl_replay.cli import main
from cl_replay.sweep import runner
from cl_replay.sweep.cells import CellState, cell_state, new_record, read_record, run_cell, write_record
from cl_replay.sweep.spec import expand, load_spec

ONE_EPOCH = {"epochs": 1, "warmup": 1, "limit": 200, "is_samples": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 workers for the module (the sweep joins it instead of starting its own)."""
    assert runner.start_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def write_spec(path: Path, axes: dict, base: dict | None = None, command: str = "pretrain") -> Path:
    path.write_text(yaml.safe_dump({"command": command, "base": {**ONE_EPOCH, **(base or {})}, "axes": axes}))
    return path


def sweep(spec: Path, out: Path, data_root: Path | None = None, *args: str):
    options = ["--out", str(out)] + (["--data-root", str(data_root)] if data_root else [])
    return CliRunner().invoke(main, ["sweep", str(spec), *options, *args])


def set_writable(path: Path, writable: bool) -> None:
    mode = path.stat().st_mode
    path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_two_by_two_sweep_writes_four_run_folders_and_the_table(local_ray, tmp_path, real_data_root):
    spec = write_spec(tmp_path / "grid.yaml", {"model": ["vae", "cpvae"], "seed": [0, 1]})
    result = sweep(spec, tmp_path / "grid", real_data_root)
    assert result.exit_code == 0, result.output
    names = ["model=vae,seed=0", "model=vae,seed=1", "model=cpvae,seed=0", "model=cpvae,seed=1"]
    for name in names:
        folder = tmp_path / "grid" / name
        assert json.loads((folder / "metrics.json").read_text())["epochs_trained"] == 1
        assert yaml.safe_load((folder / "config.yaml").read_text())["seed"] == int(name[-1])
        assert read_record(folder)["status"] == "done"
    table = (tmp_path / "grid" / "results.md").read_text()
    assert "| cpvae | " in table and "| vae | " in table and table.count("(n=2)") == 2
    assert all(f"| {name} |" in table for name in names)
    assert (tmp_path / "grid" / "results.png").stat().st_size > 1000
    assert (tmp_path / "grid" / "samples.png").is_file()


def test_a_sweep_started_again_runs_only_the_unfinished_cells(local_ray, tmp_path, real_data_root):
    # a read-only data root without Fashion-MNIST: its cell fails, the MNIST cell finishes
    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "MNIST").symlink_to(real_data_root / "MNIST")
    set_writable(data_root, False)
    spec = write_spec(tmp_path / "restart.yaml", {"dataset": ["mnist", "fashion_mnist"], "model": ["vae"]})
    out = tmp_path / "restart"
    first = sweep(spec, out, data_root)
    assert first.exit_code == 1
    assert "dataset=fashion_mnist,model=vae" in first.output and "FashionMNIST" in first.output
    finished = out / "dataset=mnist,model=vae"
    failed = read_record(out / "dataset=fashion_mnist,model=vae")
    assert failed["status"] == "failed" and "FashionMNIST" in failed["error"]
    finished_at = (finished / "metrics.json").stat().st_mtime_ns

    set_writable(data_root, True)
    (data_root / "FashionMNIST").symlink_to(real_data_root / "FashionMNIST")
    set_writable(data_root, False)
    again = sweep(spec, out, data_root)
    assert again.exit_code == 0, again.output
    assert "1 cells finished, 1 finished earlier, 0 failed" in again.output
    assert (finished / "metrics.json").stat().st_mtime_ns == finished_at
    assert read_record(finished)["attempts"] == 1
    assert read_record(out / "dataset=fashion_mnist,model=vae") | {"seconds": None} == failed | {
        "status": "done", "attempts": 2, "error": None, "seconds": None}
    table = (out / "results.md").read_text()
    assert "fashion_mnist" in table and "| dataset=mnist,model=vae |" in table


def test_an_interrupted_pretraining_cell_resumes_from_its_last_checkpoint(tmp_path, real_data_root, interrupt_at_epoch):
    spec = write_spec(tmp_path / "one.yaml", {"model": ["cpvae"]}, {"epochs": 2})
    (cell,) = expand(load_spec(spec), str(real_data_root))
    folder = tmp_path / "one" / cell.name
    interrupt_at_epoch(2)
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, folder)
    assert read_record(folder)["status"] == "running"
    assert cell_state(cell, folder) == (CellState.RESUME, "")

    interrupt_at_epoch(None)
    record = run_cell(cell, folder)
    assert record["status"] == "done" and record["attempts"] == 2
    assert "resuming" in (folder / "sweep.log").read_text()
    assert json.loads((folder / "metrics.json").read_text())["epochs_trained"] == 2
    assert cell_state(cell, folder) == (CellState.DONE, "")


def test_an_unknown_axis_key_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "start_ray", lambda address: pytest.fail("Ray was started"))
    spec = write_spec(tmp_path / "typo.yaml", {"modle": ["vae", "cpvae"]})
    result = sweep(spec, tmp_path / "typo")
    assert result.exit_code == 2
    assert "unknown key 'modle'" in result.output and "did you mean 'model'?" in result.output
    assert not (tmp_path / "typo").exists()


def test_a_spec_takes_a_config_file_and_its_values_are_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "start_ray", lambda address: pytest.fail("Ray was started"))
    spec = tmp_path / "with_config.yaml"
    spec.write_text(yaml.safe_dump({"command": "pretrain", "config": "vampprior_mnist_k500", "base": {"epochs": 3},
                                    "axes": {"seed": [0, 1]}}))
    model, train = expand(load_spec(spec))[1].configs
    assert (model.model, model.categories, train.epochs, train.warmup, train.seed) == ("vampprior", 500, 3, 100, 1)

    result = sweep(write_spec(tmp_path / "bad_value.yaml", {"model": ["vae", "vea"]}), tmp_path / "bad_value")
    assert result.exit_code == 2 and "cell model=vea" in result.output and "unknown model 'vea'" in result.output
    assert not (tmp_path / "bad_value").exists()


def test_a_folder_holding_another_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "start_ray", lambda address: pytest.fail("Ray was started"))
    out = tmp_path / "sweep"
    old_spec = write_spec(tmp_path / "old.yaml", {"seed": [0, 1]})
    for cell in expand(load_spec(old_spec)):
        write_record(out / cell.name, new_record(cell) | {"status": "done"})
    (out / "seed=1" / "metrics.json").write_text("{}")
    result = sweep(old_spec, out, None, "--set", "epochs=2")
    assert result.exit_code == 1
    assert "seed=0" in result.output and "epochs: 1 there, 2 now" in result.output
    assert read_record(out / "seed=0")["attempts"] == 0  # nothing was touched

    stranger = out.parent / "other"
    (stranger / "seed=0").mkdir(parents=True)
    (stranger / "seed=0" / "notes.txt").write_text("not a cell")
    result = sweep(old_spec, stranger)
    assert result.exit_code == 1 and "holds files but no sweep_cell.json" in result.output

    # a key the code gained since, at its default, is the same config
    listed = sweep(old_spec, out, None, "--dry-run")
    assert listed.exit_code == 0 and "   done  " in listed.output and " resume  " in listed.output
    record = read_record(out / "seed=1")
    del record["config"]["limit"], record["config_hash"]
    write_record(out / "seed=1", record)
    (cell,) = expand(load_spec(write_spec(tmp_path / "limit0.yaml", {"seed": [1]}, {"limit": 0})))
    assert cell_state(cell, out / "seed=1") == (CellState.DONE, "")
    (cell,) = expand(load_spec(write_spec(tmp_path / "limit200.yaml", {"seed": [1]})))
    state, reason = cell_state(cell, out / "seed=1")
    assert state is CellState.CONFLICT and "limit: '(none)' there, 200 now" in reason

    # the same loss through torch.compile is the same config
    (cell,) = expand(load_spec(write_spec(tmp_path / "compiled.yaml", {"seed": [1]}, {"limit": 0, "compile": True})))
    assert cell_state(cell, out / "seed=1") == (CellState.DONE, "")


def test_continual_learning_cells_take_the_stream_config_and_two_cpus():
    spec_path = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "cl_split_mnist.yaml"
    cells = expand(load_spec(spec_path))
    assert len(cells) == 25 and cells[0].name == "generator=cpvae,seed=0"
    cl, model = cells[0].configs
    assert (cl.stream, cl.generator, cl.iterations, model.model, model.categories) == ("split_mnist", "cpvae", 2000, "cpvae", 20)
    assert not cl.progress
    cpus = {cell.values["generator"]: cell.cpus(gpus_per_trial=0) for cell in cells}
    assert cpus == {"cpvae": 2, "vae": 2, "buffer": 1, "none": 1, "joint": 1}
    assert cells[0].cpus(gpus_per_trial=0.5) == 1


@pytest.mark.parametrize("spec_name, stream, n_experiences, iterations, categories", [
    ("cl_split_fashion_mnist", "split_fashion_mnist", 0, {"class": 2000}, 20),  # 0: the stream's 5
    ("cl_split_omniglot", "split_omniglot", 20, {"class": 250, "task": 500}, 50),
])
def test_stream_spec_runs_every_generator_over_three_seeds_on_its_stream_config(
        spec_name, stream, n_experiences, iterations, categories):
    """``iterations``: the classifier's iterations per experience in each scenario of the spec."""
    spec_path = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / f"{spec_name}.yaml"
    cells = expand(load_spec(spec_path))
    assert len(cells) == 5 * 3 * len(iterations) and {cell.values["seed"] for cell in cells} == {0, 1, 2}
    assert {cell.values["generator"] for cell in cells} == {"cpvae", "vae", "buffer", "none", "joint"}
    assert {cell.configs[0].scenario for cell in cells} == set(iterations)
    for cl, model in (cell.configs for cell in cells):
        assert (cl.stream, cl.replay_labels, cl.iterations, model.categories) == (
            stream, "soft", iterations[cl.scenario], categories)
        assert cl.n_experiences == n_experiences


def test_table1_spec_holds_the_paper_protocol():
    spec_path = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "table1_mnist.yaml"
    cells = expand(load_spec(spec_path))
    rows = [(model.model, model.categories) for model, _ in (cell.configs for cell in cells)]
    assert [name for name, _ in rows] == ["vae", "cp1", "mog", "vampprior", "vampprior", "hvae", "hvp", "flowprior", "cpvae"]
    assert {k for name, k in rows if name in ("mog", "hvp", "cpvae")} == {10} and ("vampprior", 500) in rows
    for _, train in (cell.configs for cell in cells):
        assert (train.warmup, train.patience, train.epochs, train.is_samples, train.limit) == (100, 50, 1000, 5000, 0)


def test_without_ray_the_sweep_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = sweep(write_spec(tmp_path / "grid.yaml", {"seed": [0]}), tmp_path / "grid")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert 'pip install -e ".[sweep]"' in result.output
    assert os.listdir(tmp_path) == ["grid.yaml"]
