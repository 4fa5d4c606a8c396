"""One continual-learning run: configuration, stream, classifier, replay source, Avalanche strategy,
evaluation after every experience, and the run folder.

Run folder (default ``runs/<timestamp>-cl-<stream>-<generator>``):

* ``results.json``: ``accuracy_matrix`` (row i = after training experience i, column j = test
  accuracy on experience j; one row for ``joint``), ``final_average_accuracy`` (mean of the last
  row, a fraction), ``average_forgetting`` (mean over j < T of max_{j<=i<T} A[i][j] - A[T][j];
  null with one row), ``per_class_accuracy`` (final classifier), ``wall_time_s`` (whole run,
  data loading and evaluation included), ``timing`` (per experience: classifier and generator
  loop times and ms per iteration, the generator's iterations, 0 after the last experience unless
  ``train_generator_after_last_experience``, and with a worker process the main process's wait
  for it), ``generator`` statistics (q(c), losses), ``config``.
* ``config.yaml`` (the flat configuration), ``log.txt`` (Avalanche ``TextLogger``),
  ``tensorboard/`` (Avalanche ``TensorboardLogger``: accuracy, loss, forgetting per experience
  and stream; generator losses, beta, temperature; replay images; the heat map),
  ``replay_exp<i>.png`` (what the replay source holds after experience i: after the last one, the
  generator as it was last trained), ``accuracy_matrix.png``, ``checkpoint.pt`` (final classifier
  weights and the generator as last trained: after experience T - 1 unless
  ``train_generator_after_last_experience``) and ``resume.pt`` (everything needed to
  go on, rewritten atomically after every experience: classifier, optimizers, generator, buffer,
  RNG states, accuracy rows, timings; ``cl-replay run --resume RUN_DIR``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cl_replay.config import ConfigError, as_flat_dict
from cl_replay.models import ModelConfig, build_model

from .config import (BASELINES, RESUME_STATE, CLConfig, available_generators, check_values, configs_from_values,
                     run_values)

__all__ = [
    "BASELINES",
    "CLConfig",
    "available_generators",
    "load_config",
    "run_experiment",
]


def load_config(stream: str, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> tuple[CLConfig, ModelConfig]:
    """Defaults < ``config_file`` (else the packaged ``configs/cl/<stream>.yaml``) < ``overrides``.

    Raises ``ConfigError`` for unknown keys (naming the closest) and invalid values.
    """
    values, source = run_values(stream, config_file, overrides)
    return configs_from_values(values, source)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but CUDA is not available (use --device cpu)")
    return torch.device(name)


def default_run_dir(cl: CLConfig) -> Path:
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-cl-{cl.stream}-{cl.generator}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


_ACC_KEY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")


def accuracy_row(metrics: dict[str, Any], n: int) -> list[float] | None:
    """Per-experience test accuracies from Avalanche's last metrics (None if any is missing)."""
    row: list[float | None] = [None] * n
    for key, value in metrics.items():
        match = _ACC_KEY.match(key)
        if match and int(match.group(1)) < n:
            row[int(match.group(1))] = float(value)
    return None if any(v is None for v in row) else row  # type: ignore[return-value]


def average_forgetting(matrix: list[list[float]]) -> float | None:
    """Mean over the experiences j < T of (best accuracy on j before the end) - (final accuracy on j)."""
    rows = len(matrix)
    if rows < 2:
        return None
    final = matrix[-1]
    drops = [max(matrix[i][j] for i in range(j, rows - 1)) - final[j] for j in range(min(rows - 1, len(final)))]
    return sum(drops) / len(drops) if drops else None


def save_heatmap(matrix: list[list[float]], path: Path, title: str):
    """A PNG heat map of the accuracy matrix; returns the matplotlib figure (closed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(matrix), len(matrix[0])
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * cols, 1.0 + 0.7 * rows), dpi=100)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    if rows * cols <= 400:
        for i in range(rows):
            for j in range(cols):
                value = matrix[i][j]
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8,
                        color="black" if value > 0.6 else "white")
    ax.set_xlabel("test experience")
    ax.set_ylabel("after training experience")
    ax.set_xticks(range(cols), [str(j + 1) for j in range(cols)] if cols <= 30 else None)
    ax.set_yticks(range(rows), [str(i + 1) for i in range(rows)] if rows <= 30 else None)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def _save_grid(images: torch.Tensor, shape: tuple[int, int, int], path: Path) -> torch.Tensor:
    from torchvision.utils import make_grid, save_image

    grid = make_grid(images.detach().float().cpu().clamp(0, 1).view(-1, *shape), nrow=10, padding=2, pad_value=0.5)
    save_image(grid, path)
    return grid


def _replay_semantics(replay, strategy, stream, image_shape, run_dir: Path, experience: int, writer) -> dict | None:
    """After ``experience``: what each category of a categorical generator replays, judged by the
    classifier that will label that replay (``semantics.category_semantics``). Saves
    ``replay_categories_exp<i>.png`` with one labelled row per category and logs it to TensorBoard;
    returns the JSON report (None without a categorical generator). Its samples come from a forked
    random state, so measuring leaves the run's random stream, and so its results, unchanged."""
    from PIL import Image

    from .semantics import category_semantics, class_histogram_figure, labelled_rows_image, render_figure

    generator = getattr(replay, "generator", None)
    if generator is None or not getattr(replay, "trained", False):
        return None
    with torch.random.fork_rng():
        torch.manual_seed(experience)
        balance = replay.class_balance and experience < stream.n_experiences
        seen = sorted({c for classes in stream.experience_classes[:experience] for c in classes})
        semantics = category_semantics(generator, strategy.predict, stream.class_names,
                                       balance_classes=seen if balance else None)
    if semantics is None:
        return None
    report = {"experience": experience} | semantics.report
    title = f"after experience {experience}: one row per category (share of q(c) -> majority class, purity)"
    rows = labelled_rows_image(semantics, image_shape, title)
    Image.fromarray(rows).save(run_dir / f"replay_categories_exp{experience}.png")
    writer.add_image("replay/categories", rows, experience, dataformats="HWC")
    writer.add_scalar("replay/mean_purity", report["mean_purity"], experience)
    writer.add_scalar("replay/categories_in_use", report["categories_in_use"], experience)
    histogram = render_figure(class_histogram_figure(semantics, f"replay classes after experience {experience}"))
    writer.add_image("replay/class_histogram", histogram, experience, dataformats="HWC")
    table = ["| category | share of q(c) | majority class | purity |", "|---|---|---|---|"] + [
        f"| {c['category']} | {c['share']:.3f} | {c['majority_class']} | {100 * c['purity']:.0f}% |" for c in report["categories"]
    ]
    writer.add_text("replay/categories", "\n".join(table), experience)
    return report


def _build_replay(cl: CLConfig, model_config: ModelConfig, input_dim: int, device: torch.device, writer,
                  stream_length: int, num_classes: int, batch_hook=None):
    from .generators import GeneratorSchedule, ReplayGenerator
    from .sources import BufferReplay, GeneratorReplay, NoReplay

    if cl.generator in ("none", "joint"):
        return NoReplay()
    if cl.generator == "buffer":
        return BufferReplay(cl.buffer_per_class, torch.Generator().manual_seed(cl.seed))
    config = replace(model_config, model=cl.generator, input_dim=input_dim)
    generator = ReplayGenerator(build_model(config), cl.generator).to(device)
    label_weight = cl.gen_label_weight if generator.categorical else 0.0  # nothing to tie without categories
    tied_count, tied_name = (stream_length, "tasks") if cl.gen_tie_to == "task" else (num_classes, "classes")
    if label_weight > 0 and config.categories < tied_count:
        raise ConfigError(f"gen_label_weight > 0 ties every category to one of the stream's {tied_count} {tied_name}: "
                          f"it needs categories >= {tied_count}, got categories={config.categories} (raise categories "
                          "or set gen_label_weight=0)")
    worker = None
    if cl.parallel_generator and device.type == "cpu" and batch_hook is None:
        from .worker import GeneratorWorker

        worker = GeneratorWorker(generator, config, cl.gen_lr, (cl.adam_beta1, cl.adam_beta2), cl.seed + 1,
                                 threads=max(1, cl.threads))
    iterations = cl.gen_iterations or cl.iterations
    schedule = GeneratorSchedule(
        iterations=iterations,
        batch_size=cl.gen_batch_size or cl.batch_size,
        replay_batch_size=cl.gen_replay_batch_size or cl.replay_batch_size,
        kl_warmup=cl.gen_kl_warmup,
        temperature_iterations=cl.gen_temperature_iterations or iterations,
        temperature_restart=cl.gen_temperature_restart,
        aggregate_samples=cl.aggregate_samples,
        replay_chunk=cl.replay_chunk,
        on_nan=cl.on_nan,
        label_weight=label_weight,
        label_classes=tied_count,
    )
    return GeneratorReplay(generator, schedule, lr=cl.gen_lr, betas=(cl.adam_beta1, cl.adam_beta2), writer=writer,
                           batch_hook=batch_hook, worker=worker, class_balance=cl.replay_balance == "class",
                           balance_samples=cl.balance_samples,
                           stream_length=None if cl.train_generator_after_last_experience else stream_length,
                           pooled_threads=2 * cl.threads if cl.pool_threads else 0,
                           classifier_pooled_threads=2 * cl.threads if cl.pool_classifier_threads else 0,
                           tie_to=cl.gen_tie_to)


def run_experiment(cl: CLConfig, model_config: ModelConfig | None = None, *, stream=None,
                   run_dir: str | Path | None = None, echo=print, batch_hook=None, resume: bool = False
                   ) -> dict[str, Any]:
    """Run one stream with one generator and write the run folder; returns the results dict.

    ``stream`` (a ``ContinualStream``) replaces the one named by ``cl.stream`` (tests use tiny
    synthetic streams); ``batch_hook(x_current, x_replay)`` sees every generator training batch.
    After every experience the run saves ``resume.pt`` (atomically); ``resume=True`` continues the
    run in ``run_dir`` (or ``cl.out``) after its last finished experience, exactly as the
    uninterrupted run would have gone on.
    """
    from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, loss_metrics
    from avalanche.logging import TensorboardLogger, TextLogger
    from avalanche.training.plugins import EvaluationPlugin
    from tqdm import tqdm

    from cl_replay.checkpoints import rng_state, save_atomic, set_rng_state
    from cl_replay.divergence import DivergenceError

    from .generators import make_adam
    from .replay import MLPClassifier, ReplayStrategy
    from .streams import build_stream

    start = time.perf_counter()
    check_values(dataclasses.asdict(cl))
    model_config = model_config or ModelConfig()
    torch.set_flush_denormal(True)  # denormals made generative replay several times slower on CPU
    if cl.threads > 0:
        torch.set_num_threads(cl.threads)
    torch.manual_seed(cl.seed)
    device = _device(cl.device)
    if stream is None:
        stream = build_stream(cl.stream, data_root=cl.data_root or None, seed=cl.seed, scenario=cl.scenario,
                              n_experiences=cl.n_experiences, eval_split=cl.eval_split, device=device,
                              download=cl.download)
    load_time = time.perf_counter() - start
    run_dir = Path(run_dir or cl.out or default_run_dir(cl))
    flat = as_flat_dict(cl, model_config)
    flat["out"] = str(run_dir)
    if resume:
        saved = torch.load(run_dir / RESUME_STATE, map_location=device, weights_only=False)
    else:
        import yaml

        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(flat, sort_keys=False))

    tb_logger = TensorboardLogger(run_dir / "tensorboard")
    log_file = open(run_dir / "log.txt", "a" if resume else "w")
    evaluator = EvaluationPlugin(
        accuracy_metrics(epoch=True, experience=True, stream=True),
        loss_metrics(epoch=True, experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        loggers=[tb_logger, TextLogger(log_file)],
    )
    input_dim = stream.train[0].x.shape[1]
    image_shape = stream.image_shape
    classifier = MLPClassifier(input_dim, stream.num_classes, cl.fc_units, cl.fc_layers).to(device)
    optimizer = make_adam(classifier.parameters(), lr=cl.lr, betas=(cl.adam_beta1, cl.adam_beta2))

    joint = cl.generator == "joint"
    T = stream.n_experiences
    iterations = (cl.joint_iterations or cl.iterations * T) if joint else cl.iterations
    train_experiences = [stream.joint()] if joint else list(stream.train_stream)
    replay = _build_replay(cl, model_config, input_dim, device, tb_logger.writer, len(train_experiences),
                           stream.num_classes, batch_hook)

    def work(experiences: int) -> int:  # iterations of the first ``experiences`` experiences (progress bar)
        return sum(iterations + replay.extra_iterations(t) for t in range(1, experiences + 1))

    total = work(len(train_experiences))
    progress = tqdm(total=total, desc=f"{cl.stream}/{cl.generator}", unit="it", mininterval=1.0,
                    disable=not cl.progress, dynamic_ncols=True)
    strategy = ReplayStrategy(
        model=classifier, optimizer=optimizer, replay=replay, num_classes=stream.num_classes,
        scenario=cl.scenario, task_classes=stream.experience_classes, iterations=iterations,
        train_mb_size=cl.batch_size, replay_mb_size=cl.replay_batch_size, replay_chunk=cl.replay_chunk,
        eval_mb_size=cl.eval_batch_size,
        replay_labels=cl.replay_labels, distill_temperature=cl.distill_temperature,
        current_weight=cl.current_weight or None, tensor_source=stream.tensors, progress=progress, device=device,
        evaluator=evaluator, on_nan=cl.on_nan,
    )
    echo(f"run folder: {run_dir}   ({stream.name}, {cl.scenario}-incremental, {T} experiences, "
         f"generator {cl.generator}, device {device})")

    matrix: list[list[float]] = []
    category_semantics_rows: list[dict] = []
    eval_time = earlier_wall_time = 0.0
    if resume:
        strategy.load_state_dict(saved["strategy"])
        matrix, eval_time, earlier_wall_time = saved["matrix"], saved["eval_time_s"], saved["wall_time_s"]
        category_semantics_rows = saved.get("category_semantics", [])
        set_rng_state(saved["rng"])
        progress.update(work(len(matrix)))
        echo(f"resuming after experience {len(matrix)}/{len(train_experiences)}")
    try:
        for i, experience in enumerate(train_experiences):
            if i < len(matrix):
                continue
            strategy.train(experience)
            eval_start = time.perf_counter()
            metrics = strategy.eval(stream.test_stream)
            row = accuracy_row(metrics, T)
            if row is None:  # fall back on our own evaluation
                row = [_accuracy(strategy, data) for data in stream.test]
            matrix.append(row)
            eval_time += time.perf_counter() - eval_start
            images = replay.sample_grid(cl.grid_samples)
            if images is not None:
                grid = _save_grid(images, image_shape, run_dir / f"replay_exp{i + 1}.png")
                tb_logger.writer.add_image("replay/samples", grid, i + 1)
            semantics = _replay_semantics(replay, strategy, stream, image_shape, run_dir, i + 1, tb_logger.writer)
            if semantics is not None:
                category_semantics_rows.append(semantics)
            timing = strategy.timing[-1] if strategy.timing else {}
            gen_ms = timing.get("generator_ms_per_iteration")
            progress.write(
                f"after experience {i + 1}/{len(train_experiences)}: accuracy "
                + " ".join(f"{100 * a:5.1f}" for a in row)
                + f"  | mean over seen {100 * sum(row[: i + 1]) / (i + 1) if not joint else 100 * sum(row) / T:5.1f}%"
                + f"  | classifier {timing.get('classifier_ms_per_iteration', float('nan')):.1f} ms/it"
                + (f", generator {gen_ms:.1f} ms/it" if gen_ms else "")
            )
            save_atomic({"strategy": strategy.state_dict(), "matrix": matrix, "eval_time_s": eval_time,
                         "category_semantics": category_semantics_rows,
                         "wall_time_s": earlier_wall_time + time.perf_counter() - start, "rng": rng_state()},
                        run_dir / RESUME_STATE)
    except DivergenceError as error:
        kept = (f"{run_dir / RESUME_STATE} holds the run after experience {len(matrix)}; continue it with "
                f"cl-replay run --resume {run_dir} (--on-nan skip skips such steps)") if matrix else "no experience finished"
        raise DivergenceError(f"{error}. The run stopped; {kept}.") from None
    finally:
        progress.close()
        replay.close()

    per_class = _per_class_accuracy(strategy, stream)
    final = matrix[-1]
    results: dict[str, Any] = {
        "stream": stream.name,
        "generator": cl.generator,
        "scenario": cl.scenario,
        "seed": cl.seed,
        "eval_split": cl.eval_split,
        "n_experiences": T,
        "experience_names": stream.experience_names,
        "experience_classes": [[stream.class_names[c] for c in g] for g in stream.experience_classes],
        "accuracy_matrix": matrix,
        "final_average_accuracy": sum(final) / len(final),
        "average_forgetting": average_forgetting(matrix),
        "per_class_accuracy": per_class,
        "wall_time_s": None,
        "load_time_s": load_time,
        "eval_time_s": eval_time,
        "timing": strategy.timing,
        "category_semantics": category_semantics_rows,
        "generator_stats": [
            {k: v for k, v in s.items() if k not in ("final",)} | {"final_losses": s.get("final")}
            for s in strategy.replay_stats if s
        ],
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "config": flat,
    }
    save_heatmap(matrix, run_dir / "accuracy_matrix.png",
                 f"{stream.name} / {cl.generator} / {cl.scenario}-IL: final avg {100 * results['final_average_accuracy']:.1f}%")
    try:
        from PIL import Image
        import numpy as np

        heat = np.asarray(Image.open(run_dir / "accuracy_matrix.png").convert("RGB"))
        tb_logger.writer.add_image("accuracy_matrix", heat, len(matrix), dataformats="HWC")
    except Exception:  # the PNG is what matters; the TensorBoard copy is a convenience
        pass
    checkpoint = {"classifier": classifier.state_dict()}
    generator = getattr(replay, "generator", None)
    if generator is not None:
        checkpoint["generator"] = generator.state_dict()
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    results["wall_time_s"] = earlier_wall_time + time.perf_counter() - start
    (run_dir / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    tb_logger.writer.add_scalar("final_average_accuracy", results["final_average_accuracy"], len(matrix))
    tb_logger.writer.close()
    log_file.close()
    echo(f"final average accuracy {100 * results['final_average_accuracy']:.2f}%"
         + (f", average forgetting {100 * results['average_forgetting']:.2f}%" if results["average_forgetting"] is not None else "")
         + f", wall time {results['wall_time_s']:.0f} s -> {run_dir / 'results.json'}")
    return results


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def _accuracy(strategy, data) -> float:
    predicted = strategy.predict(data.x, data.t)
    return float((predicted.cpu() == data.y.cpu()).float().mean()) if len(data) else float("nan")


def _per_class_accuracy(strategy, stream) -> dict[str, float]:
    from .streams import ExperienceTensors

    data = ExperienceTensors.cat(stream.test)
    predicted = strategy.predict(data.x, data.t).cpu()
    y = data.y.cpu()
    out = {}
    for c, name in enumerate(stream.class_names):
        mask = y == c
        if mask.any():
            out[name] = float((predicted[mask] == c).float().mean())
    return out
