"""The configuration of a continual-learning run, read and checked without torch or Avalanche:
``CLConfig``, the values of a run (packaged defaults ``cl_replay/configs/cl/<stream>.yaml`` <
a config file < flags) and the checks of their names and numbers."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cl_replay.checks import (BASELINES, HIDDEN_LAYERS, MODELS, ON_NAN, SCENARIOS, STREAMS, check_choice, check_device,
                              check_numbers)
from cl_replay.config import ConfigError, build_configs, packaged_config, read_yaml, resolve_config
from cl_replay.settings import ModelConfig

__all__ = ["BASELINES", "CLConfig", "REPLAY_CHUNK", "RESUME_STATE", "available_generators", "check_values",
           "configs_from_values", "run_values"]

REPLAY_CHUNK = 8
"""Replay batches generated (and, for the classifier, labelled) at once by default. Per batch of 128
on 2 CPU cores (CPU time, CP-VAE of split MNIST), chunks of 4 to 8 batches were the cheapest of 1 to
100: generating 2.4 ms instead of 3.1 one batch at a time, generating and labelling 4.2 instead of
5.3; larger chunks no longer fit the caches."""

RESUME_STATE = "resume.pt"
"""The file of a run folder that ``cl-replay run --resume`` continues from (rewritten after every experience)."""


@dataclass
class CLConfig:
    """Everything a continual-learning run needs besides the generator's architecture (``ModelConfig``).

    Protocol defaults follow van de Ven & Tolias (2019): 2000 iterations per experience, batch 128
    plus 128 replayed, Adam lr 1e-3 betas (0.9, 0.999), classifier 784-400-400-C ReLU; the
    generator is trained on the same schedule. ``gen_*`` values of 0 mean "same as the classifier's".
    Replay is generated (and labelled) ``replay_chunk`` batches at a time; the generator is not
    trained after the last experience unless ``train_generator_after_last_experience``. With
    ``parallel_generator`` the generator trains in a worker process beside the classifier, each on
    ``threads`` torch threads; with ``pool_threads`` the worker takes the main process's threads too
    while the main process waits for it (the same results up to float32 rounding, less wall time); with
    ``pool_classifier_threads`` the classifier takes the worker's threads in the last experience, after
    which the generator does not train (less wall time; that experience's classifier differs from a run
    without it in the last bits). ``gen_label_weight`` w > 0 ties CP-VAE's categories to classes: category
    k belongs to class k mod C, and the generator's loss adds w * (-log q(class of the row | x)) for
    its current data and its own replay (``strategies.generator_core``); 0 leaves them unsupervised, and
    generators without categories ignore it. ``gen_tie_to: task`` ties them to the T experiences
    instead: category k belongs to experience (task) k mod T; task-incremental, each replayed sample
    is rehearsed on the head of its category's task only. The classifier's loss is w * L_current + (1 - w) * L_replay
    with w = ``current_weight``, or 1/t in experience t when it is 0 (van de Ven & Tolias 2019).
    """

    stream: str = "split_mnist"
    generator: str = "cpvae"
    scenario: str = "class"
    seed: int = 0
    n_experiences: int = 0
    data_root: str = ""
    eval_split: str = "test"
    device: str = "auto"
    iterations: int = 2000
    batch_size: int = 128
    replay_batch_size: int = 128
    lr: float = 0.001
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    fc_units: int = 400
    fc_layers: int = 2
    replay_labels: str = "hard"
    distill_temperature: float = 2.0
    current_weight: float = 0.0
    replay_balance: str = "none"
    balance_samples: int = 200
    buffer_per_class: int = 100
    joint_iterations: int = 0
    gen_iterations: int = 0
    gen_batch_size: int = 0
    gen_replay_batch_size: int = 0
    gen_lr: float = 0.001
    gen_kl_warmup: int = 0
    gen_temperature_iterations: int = 0
    gen_temperature_restart: bool = True
    gen_label_weight: float = 0.0
    gen_tie_to: str = "class"
    aggregate_samples: int = 10000
    replay_chunk: int = REPLAY_CHUNK
    train_generator_after_last_experience: bool = False
    eval_batch_size: int = 1000
    grid_samples: int = 100
    out: str = ""
    threads: int = 1
    parallel_generator: bool = True
    pool_threads: bool = True
    pool_classifier_threads: bool = True
    progress: bool = True
    download: bool = True
    on_nan: str = "stop"


def available_generators() -> list[str]:
    """Generative models of the registry (``cl_replay.models.MODELS``) and the reference points."""
    return sorted(MODELS) + list(BASELINES)


def run_values(stream: str, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
               ) -> tuple[dict[str, Any], str]:
    """The flat values of a run and where they come from: ``config_file`` (else the packaged
    ``cl/<stream>.yaml`` when there is one) < ``overrides``; ``stream`` always wins."""
    check_choice("stream", stream, STREAMS)
    path = resolve_config(config_file, "cl") if config_file else packaged_config(f"cl/{stream}.yaml")
    values: dict[str, Any] = {}
    source = "defaults"
    if config_file or path.is_file():
        values.update(read_yaml(path))
        source = str(path)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["stream"] = stream
    return values, source


def check_values(values: dict[str, Any]) -> None:
    """Names and numbers of a run (a flat dict, before any work); raises ``ConfigError``."""
    defaults = CLConfig()
    for key, valid in (("stream", STREAMS), ("generator", available_generators()), ("scenario", SCENARIOS),
                       ("replay_labels", ("hard", "soft")), ("replay_balance", ("none", "class")),
                       ("eval_split", ("test", "val")), ("on_nan", ON_NAN), ("gen_tie_to", ("class", "task"))):
        check_choice(key, values.get(key, getattr(defaults, key)), valid)
    check_choice("hidden_layer", values.get("hidden_layer", ModelConfig.hidden_layer), HIDDEN_LAYERS)
    check_device(str(values.get("device", defaults.device)))
    check_numbers(values, positive=("iterations", "batch_size", "replay_batch_size", "eval_batch_size", "lr", "gen_lr",
                                    "fc_units", "fc_layers", "categories", "latent_dim", "hidden",
                                    "distill_temperature", "buffer_per_class", "aggregate_samples", "balance_samples",
                                    "replay_chunk"),
                  non_negative=("n_experiences", "joint_iterations", "gen_iterations", "gen_batch_size",
                                "gen_replay_batch_size", "gen_kl_warmup", "gen_temperature_iterations",
                                "grid_samples", "threads", "gen_label_weight", "current_weight"))
    if float(values.get("current_weight", 0.0)) > 1.0:
        raise ConfigError(f"current_weight must be at most 1 (0 means 1/t), got {values['current_weight']}")


def configs_from_values(values: dict[str, Any], source: str) -> tuple[CLConfig, ModelConfig]:
    """The run's configs from flat ``values`` (checked; unknown keys name the closest valid one); the
    generator, when it is a model, names the model."""
    check_values(values)
    cl, model = build_configs(values, CLConfig, ModelConfig, source=source)
    if cl.generator in MODELS:
        model = replace(model, model=cl.generator)
    return cl, model
