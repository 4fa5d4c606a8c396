"""Wall time of continual learning on split MNIST against a deep-generative-replay reference.

    python benchmarks/cl_wall_time.py --data-root ../shared/datasets --out runs/cl_wall_time
    python benchmarks/cl_wall_time.py --data-root ../shared/datasets --out /tmp/wall --iterations 50   # a quick check

Every contender is one ``cl-replay run split_mnist`` (a fresh interpreter, as from the command line)
with the protocol defaults of ``configs/cl/split_mnist.yaml`` (2000 iterations per experience, batch
128 + 128 replayed, one torch thread per process, pooled while one waits), in its own run folder under
``--out``:

* ``cpvae``: CP-VAE replay with the run's defaults: the generator trains in a worker process beside
  the classifier, replay is generated (and labelled) ``replay_chunk`` batches at a time, and the
  generator is not trained after the last experience;
* ``cpvae_unpooled``: the same without pooled threads (each process keeps its one thread while
  the other waits), to show what pooling gives;
* ``cpvae_128``: the defaults with the protocol's 128 instead of 64 replayed samples per generator
  step, to show what the smaller rehearsal batch saves;
* ``vae``: ``cpvae``'s defaults with the unconditional VAE generator (same encoder and decoder sizes);
* ``dgr``: the reference, our implementation of the deep generative replay procedure (Shin et al.
  2017, as van de Ven & Tolias 2019 run it), not van de Ven's code: the ``vae`` generator trained in
  the classifier's process after the classifier in every experience (``parallel_generator: false``),
  hard labels, replay generated one batch at a time (``replay_chunk: 1``), and the generator trained
  after the last experience too (``train_generator_after_last_experience: true``), on the schedule
  of the protocol (2000 iterations of 128 current + 128 replayed rows for the classifier and the
  generator alike, ``gen_* = 0``) and with the gated 2x300 networks, whatever the defaults of
  ``configs/cl/split_mnist.yaml`` are: its VAE has about the arithmetic of van de Ven's DGR VAE
  (784-400-400, 100-d latent, ReLU), so the reference stays put when our generator's defaults change.

``--past COMMIT`` adds ``cpvae@COMMIT``: ``cl-replay run split_mnist --generator cpvae`` with the
code and defaults of an earlier commit of this repository (``git archive`` into ``--out``), to set
today's figures beside a measurement made with that code elsewhere, e.g. against a reference that
cannot run here.

``--external NAME=COMMAND`` (repeatable) adds a contender that is any shell command, e.g. another
project's implementation of deep generative replay run from its own folder; only its command wall
time is measured (its log is kept beside the run folders), and the table gains a ratio column to it.

The contenders run one after the other, ``--repeats`` rounds of all of them in turn, so that a busy
machine weighs on each alike. The table gives the final average accuracy, the command's wall time
(interpreter start to exit) and ``results.json``'s ``wall_time_s`` (the run itself, data loading and
evaluation included), the ratio of command wall times to the reference and, with ``--past``, to ``cpvae@COMMIT`` (medians over the repeats),
and per experience the classifier's and the generator's loop times, the generator's iterations and
how long the classifier's process waited for the generator (mean over the repeats). It is printed
and written to ``--out/cl_wall_time.md`` (with every run's figures in ``cl_wall_time.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "dgr"
CONTENDERS = {
    "cpvae": ("cpvae", {}),
    "cpvae_unpooled": ("cpvae", {"pool_threads": "false"}),
    "cpvae_128": ("cpvae", {"gen_replay_batch_size": "128"}),
    "vae": ("vae", {}),
    REFERENCE: ("vae", {"parallel_generator": "false", "replay_chunk": "1", "replay_labels": "hard",
                        "train_generator_after_last_experience": "true", "gen_iterations": "0",
                        "gen_batch_size": "0", "gen_replay_batch_size": "0", "hidden_layer": "gated",
                        "hidden": "300"}),
}
TITLES = {
    "cpvae": "cpvae (defaults)",
    "cpvae_unpooled": "cpvae, threads not pooled (`pool_threads=false`)",
    "cpvae_128": "cpvae, 128 replayed per generator step (`gen_replay_batch_size=128`)",
    "vae": "vae (defaults)",
    REFERENCE: ("DGR reference (vae, hard labels, one process, per-batch replay, generator trained after the "
                "last experience)"),
}


def past_name(commit: str) -> str:
    return f"cpvae@{commit}"


def extract_commit(commit: str, out: Path) -> Path:
    """The tree of ``commit`` (``git archive``) in ``out/code-<commit>``."""
    folder = out / f"code-{commit}"
    if not folder.exists():
        folder.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run_command(name: str, run_dir: Path, args: argparse.Namespace) -> list[str]:
    """The ``cl-replay run`` command line of contender ``name`` writing to ``run_dir`` (``cpvae@COMMIT``:
    cpvae with that code's defaults)."""
    generator, settings = CONTENDERS.get(name, ("cpvae", {}))
    command = [sys.executable, "-m", "strategies.cli", "split_mnist", "--generator", generator, "--seed",
               str(args.seed), "--out", str(run_dir), "--no-progress"]
    if args.data_root:
        command += ["--data-root", args.data_root]
    if args.iterations:
        command += ["--iterations", str(args.iterations)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    return command


def timed_run(name: str, command: list[str] | str, log_path: Path, **options) -> float:
    """Run ``command`` (``subprocess.run`` ``options``: cwd, env, shell) with its output in
    ``log_path``; returns its wall time, or raises with the log's tail when it fails."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, **options)
    wall = time.perf_counter() - start
    if finished.returncode != 0:
        shown = command if isinstance(command, str) else " ".join(command)
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError(f"{name} failed (exit {finished.returncode}): {shown}\n" + "\n".join(tail))
    return wall


def run_contender(name: str, run_dir: Path, args: argparse.Namespace) -> dict:
    """Run one contender; returns its ``results.json`` figures (none for an ``--external`` one) and
    the command's wall time."""
    log_path = run_dir.with_suffix(".log")
    if name in args.externals:  # another project's command: only its wall time
        command = args.externals[name]
        return {"contender": name, "command": command,
                "command_wall_time_s": timed_run(name, command, log_path, shell=True)}
    command = run_command(name, run_dir, args)
    code = ROOT if name in CONTENDERS else extract_commit(args.past, run_dir.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")])))
    wall = timed_run(name, command, log_path, cwd=code, env=env)
    results = json.loads((run_dir / "results.json").read_text())
    return {"contender": name, "run_dir": str(run_dir), "command": command, "command_wall_time_s": wall,
            "run_wall_time_s": results["wall_time_s"], "final_average_accuracy": results["final_average_accuracy"],
            "timing": results["timing"]}


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f}" if values else "–"


def markdown(runs: list[dict], args: argparse.Namespace) -> str:
    """The summary table and the per-experience timings."""
    names = list(dict.fromkeys(r["contender"] for r in runs))
    by_name = {n: [r for r in runs if r["contender"] == n] for n in names}
    median_wall = {n: statistics.median(r["command_wall_time_s"] for r in by_name[n]) for n in names}
    references = ([(REFERENCE, "reference")] + ([(past_name(args.past), past_name(args.past))] if args.past else [])
                  + [(name, name) for name in args.externals])
    lines = [f"split MNIST, seed {args.seed}, {args.iterations or 'protocol (2000)'} iterations per experience, "
             f"{args.repeats} round(s) of the contenders in turn; wall times are medians over the rounds.", "",
             "| contender | final average accuracy (%) | command wall time (s) | run wall time (s) | "
             + " | ".join(f"ratio to {label}" for _, label in references) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(references)]
    for n in names:
        ratios = [f"{median_wall[n] / median_wall[ref]:.2f}" if ref in median_wall else "–" for ref, _ in references]
        if n in args.externals:
            lines.append(f"| {n}: `{args.externals[n]}` | – | {median_wall[n]:.0f} | – | {' | '.join(ratios)} |")
            continue
        accuracy = statistics.mean(100 * r["final_average_accuracy"] for r in by_name[n])
        run_wall = statistics.median(r["run_wall_time_s"] for r in by_name[n])
        title = TITLES.get(n, f"cpvae with the code and defaults of commit {args.past}")
        lines.append(f"| {title} | {accuracy:.2f} | {median_wall[n]:.0f} | {run_wall:.0f} | {' | '.join(ratios)} |")
    lines += ["", "Per experience (seconds, mean over the rounds): classifier loop, generator loop, generator "
              "iterations, the classifier's process waiting for the generator's worker.", "",
              "| contender | experience | classifier (s) | generator (s) | generator iterations | waited (s) |",
              "|---|---:|---:|---:|---:|---:|"]
    for n in (n for n in names if n not in args.externals):
        for i in range(len(by_name[n][0]["timing"])):
            rows = [r["timing"][i] for r in by_name[n]]
            values = {key: [row[key] for row in rows if key in row] for key in
                      ("classifier_wall_time_s", "generator_wall_time_s", "generator_iterations", "waited_for_generator_s")}
            iterations = values["generator_iterations"]
            lines.append(f"| {n} | {i + 1} | {_cell(values['classifier_wall_time_s'])} | "
                         f"{_cell(values['generator_wall_time_s'])} | {iterations[0] if iterations else '–'} | "
                         f"{_cell(values['waited_for_generator_s'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the run folders, logs and the table (must not hold them yet)")
    parser.add_argument("--data-root", default=None, help="folder with MNIST/raw (else $CL_REPLAY_DATA)")
    parser.add_argument("--iterations", type=int, default=0, help="iterations per experience (default: the protocol's 2000)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all contenders in turn (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {', '.join(CONTENDERS)} (default: all)")
    parser.add_argument("--past", metavar="COMMIT", help="also run cpvae with the code and defaults of this commit")
    parser.add_argument("--external", action="append", default=[], metavar="NAME=COMMAND",
                        help="also time this shell command as contender NAME (repeatable)")
    args = parser.parse_args(argv)
    args.externals = {}
    for entry in args.external:
        name, sep, command = entry.partition("=")
        if not sep or not name or not command or name in CONTENDERS or name in args.externals:
            parser.error(f"--external {entry!r}: give NAME=COMMAND with a new name")
        args.externals[name] = command
    names = [n for n in args.contenders.split(",") if n]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        parser.error(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    if args.iterations < 0 or args.repeats < 1:
        parser.error("--iterations must be >= 0 and --repeats >= 1")
    out = Path(args.out)
    if args.past:
        found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.past}^{{commit}}"], cwd=ROOT,
                               capture_output=True)
        if found.returncode != 0:
            parser.error(f"--past {args.past}: no such commit in {ROOT}")
    order = ([n for n in CONTENDERS if n in names] + ([past_name(args.past)] if args.past else [])
             + list(args.externals))
    planned = [(r, n, out / f"{n}-r{r + 1}") for r in range(args.repeats) for n in order]
    taken = [str(d) for _, _, d in planned if d.exists()]
    if taken:
        parser.error(f"run folders already exist: {', '.join(taken)}; choose another --out or remove them")
    out.mkdir(parents=True, exist_ok=True)

    runs = []
    for r, name, run_dir in planned:
        print(f"round {r + 1}/{args.repeats}: {name} -> {run_dir}", flush=True)
        try:
            result = run_contender(name, run_dir, args)
        except (RuntimeError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        runs.append(result)
        if name in args.externals:
            print(f"  {result['command_wall_time_s']:.0f} s", flush=True)
        else:
            print(f"  {100 * result['final_average_accuracy']:.2f}%, {result['command_wall_time_s']:.0f} s "
                  f"(run {result['run_wall_time_s']:.0f} s)", flush=True)
    table = markdown(runs, args)
    print(table)
    (out / "cl_wall_time.md").write_text(table + "\n")
    (out / "cl_wall_time.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
