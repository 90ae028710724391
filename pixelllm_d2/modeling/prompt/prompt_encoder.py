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
        dense_box: also give each box as a dense prompt: the box rasterised on a grid 4x finer than the image map
            and encoded by SAM's mask path (`dense()`); the official code uses `no_mask_embed` everywhere.
    """

    @configurable
    def __init__(
        self, *, embed_dim: int = 256, image_size: int, sam_grid: int, num_tokens: int = 5, freeze: bool = True, dense_box: bool = False
    ):
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
        self.dense_box = dense_box
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
            dense_box=cfg.MODEL.PIXELLLM.PROMPT_ENCODER.DENSE_BOX,
        )

    @property
    def no_mask_embed(self) -> torch.Tensor:
        """(C,) SAM's dense "no mask" embedding."""
        return self.sam.no_mask_embed.weight[0]

    def dense_pe(self, grid: Tuple[int, int]) -> torch.Tensor:
        """(1, C, H, W) SAM's random-Fourier positional encoding of an H x W grid covering the padded input."""
        return self.sam.pe_layer(tuple(grid)).unsqueeze(0)

    def dense(self, boxes: torch.Tensor, grid) -> torch.Tensor:
        """Dense prompts for an (H, W) image map.

        Args:
            boxes: (Q, 4) XYXY in padded-input pixels; rows of all zeros mean "no box" (point prompts).
        Returns:
            (Q, C, H, W): with `dense_box`, SAM's mask encoding of each box rasterised (+1 inside, -1 outside) on a
            (4H, 4W) grid over the padded input (at least the cell holding the box centre is inside); else, and for
            rows without a box, SAM's `no_mask_embed` everywhere.
        """
        h, w = grid
        q = boxes.shape[0]
        none = self.no_mask_embed.view(1, -1, 1, 1).expand(q, -1, h, w)
        if not self.dense_box:
            return none
        gy = (torch.arange(4 * h, device=boxes.device) + 0.5) * self.image_size / (4 * h)
        gx = (torch.arange(4 * w, device=boxes.device) + 0.5) * self.image_size / (4 * w)
        x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        # a cell is inside when its centre is, or when it holds the box centre (boxes thinner than a cell)
        inx = ((gx >= x0) & (gx <= x1)) | ((gx - cx).abs() <= self.image_size / (8 * w))
        iny = ((gy >= y0) & (gy <= y1)) | ((gy - cy).abs() <= self.image_size / (8 * h))
        masks = (iny[:, :, None] & inx[:, None, :]).to(self.no_mask_embed.dtype) * 2 - 1
        dense = self.sam._embed_masks(masks[:, None])
        has_box = boxes.abs().sum(-1) > 0
        return torch.where(has_box[:, None, None, None], dense, none)

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
