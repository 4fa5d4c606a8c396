"""Building blocks shared by every model: the gated dense layer and the 2x300 gated networks."""
from __future__ import annotations

import torch
from torch import nn


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


def gated_mlp(in_features: int, hidden: int = 300, layers: int = 2) -> nn.Sequential:
    """``layers`` gated dense layers of ``hidden`` units (the 2x300 networks of paper section 5)."""
    sizes = [in_features] + [hidden] * layers
    return nn.Sequential(*(GatedDense(a, b) for a, b in zip(sizes[:-1], sizes[1:])))
