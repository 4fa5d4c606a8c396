"""cl-replay: continual learning with generative replay from a CP-VAE (conditional-prior VAE)."""
from .models import CPVAE, VAE, GenerativeModel, ModelConfig, build_model

__version__ = "0.1.0"
__all__ = ["CPVAE", "VAE", "GenerativeModel", "ModelConfig", "build_model"]
