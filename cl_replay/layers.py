"""Building blocks shared by every model: the gated dense layer and the 2x300 networks built of it
(or of ReLU layers, ``ModelConfig.hidden_layer``)."""
from __future__ import annotations

import torch
from torch import nn

from .checks import HIDDEN_LAYERS


def glorot_linear(in_features: int, out_features: int) -> nn.Linear:
    """A linear layer with Glorot-uniform weights and zero bias (paper section 5)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class GatedDense(nn.Module):
    """h = (W x + b) * sigmoid(V x + c)   (the gating of Dauphin et al. 2017, as in the VampPrior code)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        # One matrix multiply for both halves: [W; V] x; each half Glorot-initialised on its own.
        self.linear = nn.Linear(in_features, 2 * out_features)
        for half in self.linear.weight.data.chunk(2, dim=0):
            nn.init.xavier_uniform_(half)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


def dense_layer(in_features: int, out_features: int, kind: str = "gated") -> nn.Module:
    """One hidden layer: ``gated`` h = (W x + b) * sigmoid(V x + c), or ``relu`` h = max(0, W x + b)
    (half the arithmetic: one matrix instead of two)."""
    if kind == "gated":
        return GatedDense(in_features, out_features)
    if kind == "relu":
        return nn.Sequential(glorot_linear(in_features, out_features), nn.ReLU())
    raise ValueError(f"hidden_layer must be one of {', '.join(HIDDEN_LAYERS)}; got {kind!r}")


def mlp(in_features: int, hidden: int = 300, layers: int = 2, kind: str = "gated") -> nn.Sequential:
    """``layers`` hidden layers of ``hidden`` units (gated: the 2x300 networks of paper section 5)."""
    sizes = [in_features] + [hidden] * layers
    return nn.Sequential(*(dense_layer(a, b, kind) for a, b in zip(sizes[:-1], sizes[1:])))
