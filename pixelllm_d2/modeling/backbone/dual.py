"""The fused image encoder: SAM ViT (frozen) + EVA02, both at the same input size, maps resized to one grid and
concatenated along channels (paper scale: 24x24x256 and 27x27x1024 -> 27x27x1280)."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...config import configurable
from ..build import BACKBONE_REGISTRY
from .eva02 import EVA02Encoder
from .sam_vit import build_sam_image_encoder

__all__ = ["DualViTBackbone"]


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


@BACKBONE_REGISTRY.register()
class DualViTBackbone(nn.Module):
    """SAM image encoder + optional EVA02, fused.

    Args:
        sam_encoder: segment_anything `ImageEncoderViT` built for `image_size`.
        eva02: `EVA02Encoder` built for `image_size`, or None for a SAM-only map.
        image_size: side of the square padded input, pixels.
        sam_pixel_mean, sam_pixel_std: SAM normalisation (RGB, 0-255).
        eva02_pixel_mean, eva02_pixel_std: EVA02 (CLIP) normalisation (RGB, 0-255).
        interpolation: how maps are resized to the common grid ("bicubic" / "bilinear" antialiased, as the
            official jax.image.resize; or "nearest").
        freeze_sam, freeze_eva02: set requires_grad=False on the encoder's parameters.
    """

    @configurable
    def __init__(
        self,
        *,
        sam_encoder: nn.Module,
        eva02: Optional[EVA02Encoder],
        image_size: int,
        sam_pixel_mean: Sequence[float],
        sam_pixel_std: Sequence[float],
        eva02_pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
        eva02_pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        interpolation: str = "bicubic",
        freeze_sam: bool = True,
        freeze_eva02: bool = False,
    ):
        super().__init__()
        self.sam = sam_encoder
        self.eva02 = eva02
        self.image_size = image_size
        self.interpolation = interpolation
        for name, values in [
            ("sam_pixel_mean", sam_pixel_mean),
            ("sam_pixel_std", sam_pixel_std),
            ("eva02_pixel_mean", eva02_pixel_mean),
            ("eva02_pixel_std", eva02_pixel_std),
        ]:
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.sam_channels = self.sam.neck[0].out_channels if hasattr(self.sam, "neck") else 256
        patch = self.sam.patch_embed.proj.kernel_size[0]
        self.sam_grid = (image_size // patch, image_size // patch)
        grids = [self.sam_grid] + ([eva02.grid] if eva02 is not None else [])
        self.grid = max(grids)
        self.out_channels = self.sam_channels + (eva02.out_channels if eva02 is not None else 0)
        if freeze_sam:
            _freeze(self.sam)
        if eva02 is not None and freeze_eva02:
            _freeze(self.eva02)

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MODEL.PIXELLLM.SAM
        e = cfg.MODEL.PIXELLLM.EVA02
        size = cfg.INPUT.IMAGE_SIZE
        sam = build_sam_image_encoder(
            size=s.SIZE,
            img_size=size,
            patch_size=s.PATCH_SIZE,
            window_size=s.WINDOW_SIZE,
            out_chans=s.OUT_CHANS,
            embed_dim=s.EMBED_DIM,
            depth=s.DEPTH,
            num_heads=s.NUM_HEADS,
            global_attn_indexes=s.GLOBAL_ATTN_INDEXES,
            drop_path=s.DROP_PATH,
        )
        eva = None
        if e.ENABLED:
            overrides = dict(embed_dim=e.EMBED_DIM, depth=e.DEPTH, num_heads=e.NUM_HEADS, patch_size=e.PATCH_SIZE)
            eva = EVA02Encoder(e.NAME, size, overrides, drop_path=e.DROP_PATH, rope=e.ROPE,
                               grad_checkpointing=e.GRAD_CHECKPOINTING)
        return dict(
            sam_encoder=sam,
            eva02=eva,
            image_size=size,
            sam_pixel_mean=cfg.MODEL.PIXEL_MEAN,
            sam_pixel_std=cfg.MODEL.PIXEL_STD,
            eva02_pixel_mean=e.PIXEL_MEAN,
            eva02_pixel_std=e.PIXEL_STD,
            interpolation=cfg.MODEL.PIXELLLM.FUSION.INTERPOLATION,
            freeze_sam=s.FREEZE,
            freeze_eva02=e.FREEZE,
        )

    def _normalise(self, images: torch.Tensor, valid: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        # Padded pixels are 0 after normalisation (official preprocessing).
        return (images - mean) / std * valid

    def forward(self, images: torch.Tensor, image_sizes: List[Tuple[int, int]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            images: (B, 3, S, S) float RGB in 0-255, zero-padded at the bottom / right; S = image_size.
            image_sizes: the unpadded (h, w) of each image.
        Returns:
            dict with
            "fused": (B, C_sam + C_eva, Hg, Wg) the fused map (Hg, Wg = the larger of the two grids);
            "sam": (B, C_sam, Hs, Ws) SAM's image embedding (for the mask decoder).
        """
        b, _, h, w = images.shape
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(f"backbone expects {self.image_size}x{self.image_size} padded images, got {h}x{w}")
        hw = torch.tensor(image_sizes, device=images.device).view(b, 2, 1, 1)
        rows, cols = torch.arange(h, device=images.device).view(1, h, 1), torch.arange(w, device=images.device).view(1, 1, w)
        valid = ((rows < hw[:, 0]) & (cols < hw[:, 1])).unsqueeze(1).to(images.dtype)  # (B, 1, S, S): 1 on the image
        sam_frozen = not any(p.requires_grad for p in self.sam.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not sam_frozen):
            sam = self.sam(self._normalise(images, valid, self.sam_pixel_mean, self.sam_pixel_std))
        maps = [sam]
        if self.eva02 is not None:
            maps.append(self.eva02(self._normalise(images, valid, self.eva02_pixel_mean, self.eva02_pixel_std)))
        resized = [
            m if tuple(m.shape[-2:]) == self.grid else F.interpolate(m, size=self.grid, mode=self.interpolation, align_corners=False,
                                                                     antialias=self.interpolation in ("bilinear", "bicubic"))
            for m in maps
        ]
        # EVA02 channels first, then SAM: the official key order "git_visual_features+sam_visual_features".
        fused = torch.cat(resized[1:] + resized[:1], dim=1)
        return {"fused": fused, "sam": sam}
