"""EVA02 image encoder from timm, returning a spatial feature map."""
import re
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
        rope: the rotary position grid: "official" (positions 0 .. n - 1 of the n x n patch grid, as the official
            EVA02 at 384 px) or "timm" (timm's, scaled to the 224 px pretraining grid: 16 / n).
        grad_checkpointing: recompute each block's activations in the backward pass (timm's checkpointing).
    """

    def __init__(self, name: str, img_size: int, overrides: Dict[str, int] = None, drop_path: float = 0.0,
                 rope: str = "official", grad_checkpointing: bool = False):
        super().__init__()
        if rope not in ("official", "timm"):
            raise ValueError(f"EVA02 rope must be 'official' or 'timm', got {rope!r}")
        kwargs = {k: v for k, v in (overrides or {}).items() if v}
        if rope == "official":  # a reference grid equal to the patch grid: unscaled positions
            named = re.search(r"patch(\d+)", name)
            patch = kwargs.get("patch_size") or (int(named.group(1)) if named else 14)
            kwargs["ref_feat_shape"] = (img_size // patch, img_size // patch)
        try:
            self.model = timm.create_model(
                name, pretrained=False, img_size=img_size, num_classes=0, drop_path_rate=drop_path, **kwargs
            )
        except RuntimeError as e:  # timm raises RuntimeError for unknown names
            raise ValueError(f"EVA02: cannot build timm model {name!r}: {e}") from e
        self.model.set_grad_checkpointing(grad_checkpointing)
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
