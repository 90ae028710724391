"""ViTDet's simple feature pyramid on the fused single-scale map: scales 2, 1, 0.5 plus two stride-2 top levels."""
from typing import Dict, Sequence

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

__all__ = ["SimpleFeaturePyramid"]


class SimpleFeaturePyramid(nn.Module):
    """
    Args:
        in_channels: channels of the fused map. out_channels: channels of every level.
        scales: up/down-sampling factors of the levels built from the map (ViTDet: 2, 1, 0.5).
        num_top_blocks: extra levels, each a stride-2 3x3 conv on the previous coarsest level.
        names: level names, finest first (len(scales) + num_top_blocks).
    Input (B, in_channels, G, G) -> dict name -> (B, out_channels, G * scale, G * scale), finest first.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, scales: Sequence[float] = (2.0, 1.0, 0.5), num_top_blocks: int = 2, names: Sequence[str] = ()):
        super().__init__()
        self.names = list(names) or [f"p{i + 2}" for i in range(len(scales) + num_top_blocks)]
        if len(self.names) != len(scales) + num_top_blocks:
            raise ValueError(f"{len(self.names)} level names for {len(scales) + num_top_blocks} levels")
        self.stages = nn.ModuleList()
        for s in scales:
            if s == 2.0:
                resample, ch = [nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)], in_channels // 2
            elif s == 1.0:
                resample, ch = [], in_channels
            elif s == 0.5:
                resample, ch = [nn.MaxPool2d(2)], in_channels
            else:
                raise ValueError(f"pyramid scale {s} not supported (2, 1 or 0.5)")
            self.stages.append(
                nn.Sequential(
                    *resample,
                    nn.Conv2d(ch, out_channels, 1, bias=False),
                    LayerNorm2d(out_channels),
                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                    LayerNorm2d(out_channels),
                )
            )
        self.top = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(num_top_blocks))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        levels = [stage(x) for stage in self.stages]
        for i, block in enumerate(self.top):
            levels.append(block(levels[-1] if i == 0 else torch.relu(levels[-1])))
        return dict(zip(self.names, levels))
