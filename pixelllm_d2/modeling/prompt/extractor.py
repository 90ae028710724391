"""The prompt feature extractor (PixelLLM's ROIAlign-free "ROI head"): learnable query tokens plus the prompt's
tokens attend to the fused image map in SAM's TwoWayTransformer; each query token becomes one visual token for the
language model."""
import torch
from segment_anything.modeling import TwoWayTransformer
from torch import nn

from ...config import configurable
from ..build import PROMPT_EXTRACTOR_REGISTRY

__all__ = ["TwoWayPromptExtractor", "PerTokenLinear"]


class PerTokenLinear(nn.Module):
    """N independent Linear(in_dim -> out_dim) layers, the i-th applied to token i (official: one Linear per query
    token). Input (Q, N, in_dim) -> output (Q, N, out_dim)."""

    def __init__(self, num_tokens: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tokens, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num_tokens, out_dim))
        bound = in_dim**-0.5  # nn.Linear's default init range
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("qni,nio->qno", x, self.weight) + self.bias


@PROMPT_EXTRACTOR_REGISTRY.register()
class TwoWayPromptExtractor(nn.Module):
    """
    Args:
        in_channels: channels of the fused image map.
        prompt_dim: width of the prompt tokens and positional encoding (SAM: 256).
        width: transformer width.
        depth: transformer layers (official release: 6; the paper: 2).
        num_heads, mlp_dim, attn_downsample: SAM TwoWayTransformer settings.
        num_queries: learnable query tokens = visual tokens per prompt (official: 32).
        out_dim: width of each output visual token (official: 1024).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        prompt_dim: int = 256,
        width: int = 512,
        depth: int = 6,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attn_downsample: int = 2,
        num_queries: int = 32,
        out_dim: int = 1024,
    ):
        super().__init__()
        self.num_queries = num_queries
        self.out_dim = out_dim
        self.query_tokens = nn.Parameter(torch.randn(num_queries, width))
        self.image_proj = nn.Linear(in_channels, width)
        self.prompt_proj = nn.Linear(prompt_dim, width)
        self.pe_proj = nn.Linear(prompt_dim, width)
        self.transformer = TwoWayTransformer(
            depth=depth, embedding_dim=width, num_heads=num_heads, mlp_dim=mlp_dim, attention_downsample_rate=attn_downsample
        )
        self.output = PerTokenLinear(num_queries, width, out_dim)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        p = cfg.MODEL.PIXELLLM.PROMPT_EXTRACTOR
        return dict(
            in_channels=in_channels,
            prompt_dim=cfg.MODEL.PIXELLLM.SAM.OUT_CHANS,
            width=p.WIDTH,
            depth=p.DEPTH,
            num_heads=p.NUM_HEADS,
            mlp_dim=p.MLP_DIM,
            attn_downsample=p.ATTN_DOWNSAMPLE,
            num_queries=p.NUM_QUERIES,
            out_dim=p.OUT_DIM,
        )

    def forward(
        self,
        image_map: torch.Tensor,
        image_index: torch.Tensor,
        prompt_tokens: torch.Tensor,
        dense_prompt: torch.Tensor,
        dense_pe: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            image_map: (B, C, H, W) fused image features.
            image_index: (Q,) int64, the image of each prompt.
            prompt_tokens: (Q, K, prompt_dim) sparse prompt tokens.
            dense_prompt: (prompt_dim,) dense prompt embedding added to every image position (SAM's no_mask_embed).
            dense_pe: (1, prompt_dim, H, W) positional encoding of the map.
        Returns:
            (Q, num_queries, out_dim) visual tokens per prompt.
        """
        q = prompt_tokens.shape[0]
        # Project once per image, then repeat per prompt (each prompt's map is updated separately).
        src = self.image_proj(image_map.permute(0, 2, 3, 1)) + self.prompt_proj(dense_prompt)
        src = src.permute(0, 3, 1, 2)[image_index]
        pe = self.pe_proj(dense_pe.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).expand(q, -1, -1, -1)
        tokens = torch.cat([self.query_tokens.expand(q, -1, -1), self.prompt_proj(prompt_tokens)], dim=1)
        hs, _ = self.transformer(src, pe, tokens)
        return self.output(hs[:, : self.num_queries])
