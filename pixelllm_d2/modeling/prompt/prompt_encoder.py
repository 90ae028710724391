"""Location prompts -> SAM sparse tokens, padded to a fixed count (official: 5 per prompt)."""
from typing import Optional, Tuple

import torch
from segment_anything.modeling import PromptEncoder
from torch import nn

from ...config import configurable

__all__ = ["SAMPromptEncoder"]


class SAMPromptEncoder(nn.Module):
    """segment_anything's `PromptEncoder`, used for box and point prompts.

    A box becomes SAM's two corner embeddings; points become SAM's point embeddings plus its padding point. Both are
    padded to `num_tokens` tokens with copies of SAM's `no_mask_embed` (as the official code pads box prompts).

    Args:
        embed_dim: token width (SAM: 256).
        image_size: side of the square padded model input, pixels (prompt coordinates are in this frame).
        sam_grid: side of SAM's image-embedding grid (image_size / 16).
        num_tokens: tokens per prompt.
        freeze: set requires_grad=False (all official configs freeze it).
    """

    @configurable
    def __init__(self, *, embed_dim: int = 256, image_size: int, sam_grid: int, num_tokens: int = 5, freeze: bool = True):
        super().__init__()
        if num_tokens < 2:
            raise ValueError(f"num_tokens must be >= 2 (a box has two corner tokens), got {num_tokens}")
        self.sam = PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=(sam_grid, sam_grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        )
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.num_tokens = num_tokens
        if freeze:
            for p in self.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        size = cfg.INPUT.IMAGE_SIZE
        return dict(
            embed_dim=cfg.MODEL.PIXELLLM.SAM.OUT_CHANS,
            image_size=size,
            sam_grid=size // cfg.MODEL.PIXELLLM.SAM.PATCH_SIZE,
            num_tokens=cfg.MODEL.PIXELLLM.PROMPT_ENCODER.NUM_TOKENS,
            freeze=cfg.MODEL.PIXELLLM.PROMPT_ENCODER.FREEZE,
        )

    @property
    def no_mask_embed(self) -> torch.Tensor:
        """(C,) SAM's dense "no mask" embedding."""
        return self.sam.no_mask_embed.weight[0]

    def dense_pe(self, grid: Tuple[int, int]) -> torch.Tensor:
        """(1, C, H, W) SAM's random-Fourier positional encoding of an H x W grid covering the padded input."""
        return self.sam.pe_layer(tuple(grid)).unsqueeze(0)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(Q, 4) XYXY boxes in padded-input pixels -> (Q, 2, C) SAM corner embeddings (no padding)."""
        return self.sam._embed_boxes(boxes)

    def forward(
        self,
        boxes: Optional[torch.Tensor] = None,
        points: Optional[torch.Tensor] = None,
        point_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            boxes: (Q, 4) XYXY in padded-input pixels, or None.
            points: (Q, P, 2) XY in padded-input pixels, or None (exactly one of boxes / points).
            point_labels: (Q, P) 1 = positive, 0 = negative, -1 = padding; default all positive.
        Returns:
            (Q, max(num_tokens, P + 1), C) sparse prompt tokens.
        """
        if (boxes is None) == (points is None):
            raise ValueError("SAMPromptEncoder: give exactly one of boxes or points")
        if boxes is not None:
            tokens = self.embed_boxes(boxes)
        else:
            if point_labels is None:
                point_labels = torch.ones(points.shape[:2], dtype=torch.long, device=points.device)
            tokens = self.sam._embed_points(points, point_labels, pad=True)
        missing = self.num_tokens - tokens.shape[1]
        if missing > 0:
            pad = self.no_mask_embed.expand(tokens.shape[0], missing, -1)
            tokens = torch.cat([tokens, pad], dim=1)
        return tokens
