"""SAM's ViT image encoder (segment_anything.modeling.ImageEncoderViT) at any input size.

SAM's checkpoints are trained at 1024 px; PixelLLM runs the encoder at 384 px, so the absolute position embedding and
the relative position tables of the global-attention blocks are resized when a checkpoint is loaded
(`resize_sam_encoder_state_dict`).
"""
from functools import partial
from typing import Dict, List

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from timm.layers import DropPath
from torch import nn

__all__ = ["SAM_ENCODER_SIZES", "DropPathBlock", "add_drop_path", "build_sam_image_encoder", "resize_sam_encoder_state_dict"]

# width, depth, heads, global-attention blocks (segment_anything/build_sam.py), plus a CPU-sized "tiny".
SAM_ENCODER_SIZES: Dict[str, dict] = {
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=[7, 15, 23, 31]),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "tiny": dict(embed_dim=96, depth=2, num_heads=2, global_attn_indexes=[1]),
}


class DropPathBlock(Block):
    """segment_anything's ViT `Block` with stochastic depth on both residual branches, per sample (the official
    SAM encoder's, active in training even while SAM is frozen; nothing changes in evaluation or at rate 0)."""

    drop_path: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def add_drop_path(encoder: ImageEncoderViT, rate: float) -> None:
    """Give block i of `encoder` drop-path rate `rate * i / (depth - 1)` (official: rising linearly to 0.5)."""
    depth = len(encoder.blocks)
    for i, block in enumerate(encoder.blocks):
        block.__class__ = DropPathBlock  # the same parameters; forward with drop-path
        block.drop_path = DropPath(rate * i / max(depth - 1, 1))


def build_sam_image_encoder(
    size: str = "vit_h",
    img_size: int = 384,
    patch_size: int = 16,
    window_size: int = 14,
    out_chans: int = 256,
    embed_dim: int = 0,
    depth: int = 0,
    num_heads: int = 0,
    global_attn_indexes: List[int] = (),
    drop_path: float = 0.0,
) -> ImageEncoderViT:
    """segment_anything's `ImageEncoderViT` of a named size (or "custom" with the explicit arguments) built for
    `img_size` x `img_size` inputs, with stochastic depth rising linearly over the blocks to `drop_path` in training.
    Output: (B, out_chans, img_size / patch_size, img_size / patch_size)."""
    if size == "custom":
        arch = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, global_attn_indexes=list(global_attn_indexes))
        if min(embed_dim, depth, num_heads) <= 0:
            raise ValueError(f"SAM size 'custom' needs EMBED_DIM, DEPTH, NUM_HEADS > 0, got {arch}")
    elif size in SAM_ENCODER_SIZES:
        arch = SAM_ENCODER_SIZES[size]
    else:
        raise ValueError(f"unknown SAM encoder size {size!r}; choose one of {sorted(SAM_ENCODER_SIZES)} or 'custom'")
    if img_size % patch_size:
        raise ValueError(f"SAM input size {img_size} is not a multiple of the patch size {patch_size}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"SAM drop-path rate must be in [0, 1), got {drop_path}")
    encoder = ImageEncoderViT(
        img_size=img_size,
        patch_size=patch_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        qkv_bias=True,
        use_rel_pos=True,
        window_size=window_size,
        out_chans=out_chans,
        **arch,
    )
    add_drop_path(encoder, drop_path)
    return encoder


def _resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    # Linear interpolation of a (2S-1, C) relative-position table along its first axis, antialiased as the official
    # run-time `jax.image.resize(..., 'linear')` (SAM's own get_rel_pos does not antialias).
    out = F.interpolate(rel_pos[None, None].float(), size=(length, rel_pos.shape[1]), mode="bilinear", align_corners=False,
                        antialias=True)
    return out[0, 0].to(rel_pos.dtype)


def resize_sam_encoder_state_dict(state_dict: Dict[str, torch.Tensor], encoder: ImageEncoderViT) -> Dict[str, torch.Tensor]:
    """Adapt an image-encoder state dict (keys relative to the encoder) to `encoder`'s input size: bicubic resize of
    `pos_embed` (1, H, W, C) and linear resize of every `rel_pos_h` / `rel_pos_w` table whose length differs."""
    target = encoder.state_dict()
    out = dict(state_dict)
    for key, value in state_dict.items():
        if key not in target or target[key].shape == value.shape:
            continue
        want = target[key].shape
        if key == "pos_embed":
            grid = value.permute(0, 3, 1, 2).float()
            # antialiased bicubic: the official jax.image.resize's kernel (Keys a = -0.5, antialiased downsampling)
            grid = F.interpolate(grid, size=want[1:3], mode="bicubic", align_corners=False, antialias=True)
            out[key] = grid.permute(0, 2, 3, 1).to(value.dtype)
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.shape[1] == want[1]:
            out[key] = _resize_rel_pos(value, want[0])
    return out
