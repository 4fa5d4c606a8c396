"""Model registry: ``build_model(ModelConfig)`` for every model name the CLI accepts."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..priors import FlowPrior, MixtureOfGaussiansPrior, VampPrior
from .base import GenerativeModel, ModelConfig
from .cpvae import CPVAE
from .hvae import HVAE
from .vae import VAE


MODELS: dict[str, Callable[[ModelConfig], GenerativeModel]] = {
    "cpvae": CPVAE,
    "cp1": lambda config: CPVAE(replace(config, categories=1)),
    "vae": VAE,
    "mog": lambda config: VAE(config, MixtureOfGaussiansPrior(config.categories, config.latent_dim)),
    "vampprior": lambda config: VAE(
        config, lambda encoder: VampPrior(config.categories, config.input_dim, encoder, config.latent_dim)
    ),
    "flowprior": lambda config: VAE(config, FlowPrior(config.latent_dim, config.flow_layers, config.hidden)),
    "hvae": HVAE,
    "hvp": lambda config: HVAE(config, vampprior=True),
}


def build_model(config: ModelConfig) -> GenerativeModel:
    """The model named by ``config.model``, built from ``config``."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[config.model](config)


__all__ = ["CPVAE", "HVAE", "VAE", "GenerativeModel", "ModelConfig", "MODELS", "build_model"]
