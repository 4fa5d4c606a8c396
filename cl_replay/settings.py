"""The settings of the commands as dataclasses, free of torch so that the command line reads and
checks them (every key, every value) before any heavy import: ``ModelConfig``, a model's
architecture, and ``TrainConfig``, how ``cl-replay pretrain`` trains (``strategies.config.CLConfig``
is a continual-learning run's). ``models.base`` and ``trainer`` re-export them."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelConfig", "TrainConfig"]


@dataclass
class ModelConfig:
    """Architecture of a model. ``categories`` is K: CP-VAE categories, mixture components or pseudo-inputs;
    ``hidden_layer`` is ``gated`` (paper section 5) or ``relu`` for the encoder and decoder networks."""

    model: str = "cpvae"
    input_dim: int = 784
    latent_dim: int = 40
    hidden: int = 300
    hidden_layer: str = "gated"
    categories: int = 10
    likelihood: str = "bernoulli"
    temperature_start: float = 1.0
    temperature_min: float = 0.5
    temperature_epochs: int = 100
    temperature_schedule: str = "exponential"
    category_estimator: str = "gumbel"
    decoder_sees_category: bool = True
    posterior_sees_category: bool = True
    prior_init: str = "umap"
    prior_init_epoch: int = 5
    category_anchor_weight: float = 1.0
    category_anchor_until: int = 100
    category_balance_weight: float = 0.0
    category_balance_epochs: int = 100
    flow_layers: int = 6


@dataclass
class TrainConfig:
    """Training, data and evaluation settings of ``cl-replay pretrain`` (paper section 5 defaults).
    ``compile`` trains through ``torch.compile(model.loss)``: the same loss, fused kernels (a C++
    compiler is needed on CPU; the first steps wait for the compilation)."""

    dataset: str = "mnist"
    epochs: int = 1000
    batch_size: int = 100
    lr: float = 5e-4
    warmup: int = 100
    patience: int = 50
    is_samples: int = 5000
    seed: int = 0
    limit: int = 0
    device: str = "auto"
    data_root: str | None = None
    download: bool = True
    on_nan: str = "stop"
    compile: bool = False
