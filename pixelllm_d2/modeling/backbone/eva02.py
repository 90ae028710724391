"""EVA02 image encoder from timm, returning a spatial feature map."""
from typing import Dict

import timm
import torch
from torch import nn

__all__ = ["EVA02Encoder"]


class EVA02Encoder(nn.Module):
    """timm EVA02 without its classifier; the prefix (CLS) token is dropped and the final LayerNorm applied to every
    patch token (the official `ln_post`).

    Args:
        name: timm model name, e.g. "eva02_large_patch14_448" (architecture only: no weights are fetched).
        img_size: input size in pixels (square).
        overrides: architecture keyword arguments passed to timm (embed_dim, depth, num_heads, patch_size; 0 or
            absent keeps timm's value).
        drop_path: stochastic depth rate.
    """

    def __init__(self, name: str, img_size: int, overrides: Dict[str, int] = None, drop_path: float = 0.0):
        super().__init__()
        kwargs = {k: v for k, v in (overrides or {}).items() if v}
        try:
            self.model = timm.create_model(
                name, pretrained=False, img_size=img_size, num_classes=0, drop_path_rate=drop_path, **kwargs
            )
        except RuntimeError as e:  # timm raises RuntimeError for unknown names
            raise ValueError(f"EVA02: cannot build timm model {name!r}: {e}") from e
        # 384 px with 14 px patches gives a 27x27 grid; the last 6 pixel rows/columns are not seen (as officially).
        self.grid = tuple(self.model.patch_embed.grid_size)
        self.out_channels = self.model.embed_dim
        # timm keeps the final LayerNorm as `norm` (applied by forward_features) or, for avg-pooled models, as
        # `fc_norm` (applied after pooling); in the latter case it is applied here to every token instead.
        self._norm_tokens_here = isinstance(self.model.norm, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, 3, S, S) normalised images.
        Returns:
            (B, C, S / patch, S / patch) feature map.
        """
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens :]
        if self._norm_tokens_here:
            tokens = self.model.fc_norm(tokens)
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, *self.grid)
