"""The divergence guard of every training loop: a non-finite loss either stops training, naming the
step and the loss terms that are not finite, or (``on_nan='skip'``) skips that step's update.

Checking costs one device synchronisation per step (free on a CPU)."""
from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["DivergenceError", "loss_is_finite"]


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss; nothing after the last good checkpoint was saved."""


def loss_is_finite(loss: torch.Tensor, terms: Mapping[str, torch.Tensor], where: str, on_nan: str = "stop") -> bool:
    """True when ``loss`` is finite. Otherwise ``on_nan='skip'`` returns False (the caller skips the
    update) and ``'stop'`` raises :class:`DivergenceError` naming ``where`` and the non-finite ``terms``."""
    if bool(torch.isfinite(loss)):
        return True
    if on_nan == "skip":
        return False
    bad = [name for name, value in terms.items() if not bool(torch.isfinite(value).all())]
    raise DivergenceError(f"the loss became {float(loss.detach())} at {where} (non-finite terms: "
                          f"{', '.join(bad) if bad else 'none; their weighted sum overflowed'})")
