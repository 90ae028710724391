"""The location head: an MLP on every decoder hidden state -> two corner points per token."""
from typing import Sequence, Tuple

import torch
from torch import nn

from ...config import configurable

__all__ = ["MLPLocationHead", "points_to_boxes"]


def points_to_boxes(points: torch.Tensor) -> torch.Tensor:
    """(..., 2, 2) two (x, y) points -> (..., 4) XYXY box spanning them (the official `decode_boxes_from_points`)."""
    lo = points.min(dim=-2).values
    hi = points.max(dim=-2).values
    return torch.cat([lo, hi], dim=-1)


class MLPLocationHead(nn.Module):
    """Pre-LayerNorm MLP (official: 4 linear layers, hidden width 512, exact GELU) predicting per token the
    top-left and bottom-right corners of the region the token refers to, as fractions of the unpadded image:
    coordinates are `(raw + 1) / 2` (no sigmoid or clamp, as the official head) times the image width / height.

    Args:
        in_dim: decoder hidden width.
        hidden_dim: MLP width.
        num_layers: number of Linear layers (>= 1).
    """

    @configurable
    def __init__(self, *, in_dim: int, hidden_dim: int = 512, num_layers: int = 4):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"location head needs at least one layer, got {num_layers}")
        layers = [nn.LayerNorm(in_dim)]
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.GELU()]
        layers.append(nn.Linear(dims[-1], 4))
        self.mlp = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg, in_dim: int):
        h = cfg.MODEL.PIXELLLM.LOCATION_HEAD
        return dict(in_dim=in_dim, hidden_dim=h.HIDDEN_DIM, num_layers=h.NUM_LAYERS)

    def forward(self, hidden: torch.Tensor, image_wh: torch.Tensor) -> torch.Tensor:
        """
        Args:
            hidden: (Q, T, in_dim) decoder states.
            image_wh: (Q, 2) unpadded (width, height) of each query's image, pixels.
        Returns:
            (Q, T, 2, 2) the two corner points (x, y) per token, pixels of the resized image.
        """
        raw = self.mlp(hidden).unflatten(-1, (2, 2))
        return (raw + 1) * 0.5 * image_wh[:, None, None, :].to(raw.dtype)
