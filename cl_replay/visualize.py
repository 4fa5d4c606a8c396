"""Pictures people would rather look at than numbers: sample and reconstruction grids."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def image_grid(rows: torch.Tensor, image_shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    """A (C, H, W) grid image from flat examples arranged as (rows, columns, D): one row each."""
    n_rows, n_cols = rows.shape[:2]
    images = rows.reshape(n_rows * n_cols, *image_shape).clamp(0, 1).cpu()
    return make_grid(images, nrow=n_cols, padding=2, pad_value=1.0)


def save_grid(grid: torch.Tensor, path: str | Path) -> None:
    """Write a grid made by ``image_grid`` as a PNG file."""
    save_image(grid, str(path))
