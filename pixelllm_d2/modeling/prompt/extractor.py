"""The prompt feature extractor (PixelLLM's ROIAlign-free "ROI head"): learnable query tokens plus the prompt's
tokens attend to the fused image map in SAM's TwoWayTransformer; each query token becomes one visual token for the
language model."""
import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.transformer import TwoWayAttentionBlock
from torch import nn

from ...config import configurable
from ..build import PROMPT_EXTRACTOR_REGISTRY

__all__ = ["TwoWayPromptExtractor", "PerTokenLinear", "CheckpointedTwoWayAttentionBlock"]


class CheckpointedTwoWayAttentionBlock(TwoWayAttentionBlock):
    """segment_anything's `TwoWayAttentionBlock` whose activations are recomputed in the backward pass of a training
    forward (the same parameters). The extractor runs once per prompt over the whole image map, so a dense-caption
    batch (hundreds of proposals) keeps gigabytes of these activations at paper scale."""

    def forward(self, queries, keys, query_pe, key_pe):
        if self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(super().forward, queries, keys, query_pe, key_pe, use_reentrant=False)
        return super().forward(queries, keys, query_pe, key_pe)


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
        fuse: which tokens go to the language model (the official `prompt_fuse_fn`): "sparse" (the num_queries
            query tokens, official configs), "dense" (one token per map position plus its positional encoding,
            projected), or "sparse+dense" (both, sparse first).
        dense_source: the map the dense tokens come from: "transformer" (its image side after the prompt has
            updated it, official) or "input" (the projected fused map before the transformer; the same for every
            prompt of an image, and without "sparse" the transformer is not built).
        dense_grid: average-pool the dense map to dense_grid x dense_grid tokens first (0: every position, as the
            official option).
        grad_checkpointing: recompute each transformer block's activations in the backward pass.
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
        fuse: str = "sparse",
        dense_source: str = "transformer",
        dense_grid: int = 0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if fuse not in ("sparse", "dense", "sparse+dense"):
            raise ValueError(f"prompt extractor fuse must be 'sparse', 'dense' or 'sparse+dense', got {fuse!r}")
        self.fuse = fuse
        if dense_source not in ("transformer", "input"):
            raise ValueError(f"prompt extractor dense_source must be 'transformer' or 'input', got {dense_source!r}")
        self.dense_source = dense_source
        if dense_grid < 0:
            raise ValueError(f"dense_grid must be >= 0 (0 = the full map), got {dense_grid}")
        self.dense_grid = dense_grid
        self.num_queries = num_queries
        self.out_dim = out_dim
        self.query_tokens = nn.Parameter(torch.randn(num_queries, width))
        self.image_proj = nn.Linear(in_channels, width)
        self.prompt_proj = nn.Linear(prompt_dim, width)
        self.pe_proj = nn.Linear(prompt_dim, width)
        self.transformer = None
        if fuse != "dense" or dense_source == "transformer":
            self.transformer = TwoWayTransformer(
                depth=depth, embedding_dim=width, num_heads=num_heads, mlp_dim=mlp_dim, attention_downsample_rate=attn_downsample
            )
        if grad_checkpointing and self.transformer is not None:
            for block in self.transformer.layers:
                block.__class__ = CheckpointedTwoWayAttentionBlock
        self.output = PerTokenLinear(num_queries, width, out_dim) if fuse != "dense" else None
        self.dense_output = nn.Linear(width, out_dim) if fuse != "sparse" else None

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
            fuse=p.FUSE,
            dense_source=p.DENSE_SOURCE,
            dense_grid=p.DENSE_GRID,
            grad_checkpointing=p.GRAD_CHECKPOINTING,
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
            dense_prompt: (Q, prompt_dim, H, W) dense prompt of each query (SAMPromptEncoder.dense), added to the
                projected map.
            dense_pe: (1, prompt_dim, H, W) positional encoding of the map.
        Returns:
            (Q, V, out_dim) visual tokens per prompt: V = num_queries ("sparse"), D = H * W or dense_grid ** 2
            ("dense"), or num_queries + D ("sparse+dense").
        """
        q = prompt_tokens.shape[0]
        proj = self.image_proj(image_map.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # once per image
        pe = self.pe_proj(dense_pe.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        out, image_side = [], None
        if self.transformer is not None:
            # each prompt updates its own copy of the map
            src = proj[image_index] + self.prompt_proj(dense_prompt.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            tokens = torch.cat([self.query_tokens.expand(q, -1, -1), self.prompt_proj(prompt_tokens)], dim=1)
            hs, image_side = self.transformer(src, pe.expand(q, -1, -1, -1), tokens)
            if self.output is not None:
                out.append(self.output(hs[:, : self.num_queries]))
        if self.dense_output is not None:
            # the positional encoding is added so each dense token says where it is
            if self.dense_source == "input":
                out.append(self._dense_tokens(proj + pe)[image_index])
            else:
                out.append(self._dense_tokens(image_side.transpose(1, 2).reshape(q, -1, *proj.shape[-2:]) + pe))
        return torch.cat(out, dim=1)

    def _dense_tokens(self, dense: torch.Tensor) -> torch.Tensor:
        # (N, width, H, W) -> (N, D, out_dim), pooled to dense_grid x dense_grid first when set
        if self.dense_grid:
            dense = F.adaptive_avg_pool2d(dense, self.dense_grid)
        return self.dense_output(dense.flatten(2).transpose(1, 2))
