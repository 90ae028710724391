"""Referring masks: SAM's mask decoder prompted with the (predicted) referring box, plus PixelLLM's mask adapter —
a small TwoWayTransformer whose 2 learned tokens read the query's visual tokens and text features and are added,
gated by tanh(alpha) (alpha zero-initialised), to SAM's 2 box-corner tokens."""
import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from torch import nn

from ...config import configurable

__all__ = ["MaskAdapter", "SAMMaskHead"]


class MaskAdapter(nn.Module):
    """
    Args:
        visual_dim: width of the query's visual tokens; text_dim: width of its text features.
        dim: SAM prompt width (256). depth, num_heads, mlp_dim: TwoWayTransformer settings. num_outputs: tokens
        produced (2: one per box corner).
    """

    def __init__(self, visual_dim: int, text_dim: int, dim: int = 256, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048, num_outputs: int = 2):
        super().__init__()
        self.output_tokens = nn.Parameter(torch.randn(num_outputs, dim))
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_dim, eps=1e-6), nn.Linear(visual_dim, dim))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim, eps=1e-6), nn.Linear(text_dim, dim))
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads, mlp_dim=mlp_dim)
        self.alpha = nn.Parameter(torch.zeros(num_outputs, dim))

    def forward(self, box_tokens: torch.Tensor, visual_tokens: torch.Tensor, text_feats: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            box_tokens: (Q, 2, dim) SAM box-corner tokens.
            visual_tokens: (Q, V, visual_dim); text_feats: (Q, T, text_dim); text_mask: (Q, T) bool, True = real token.
        Returns:
            (Q, 2, dim) the adapted box tokens.
        """
        text = self.text_proj(text_feats) * text_mask[..., None].to(text_feats.dtype)
        feats = torch.cat([self.visual_proj(visual_tokens), text], dim=1)  # (Q, V + T, dim)
        # The transformer takes its "image" as (Q, dim, L, 1); there is no positional encoding.
        feats = feats.transpose(1, 2).unsqueeze(-1)
        tokens = self.output_tokens.expand(box_tokens.shape[0], -1, -1)
        out, _ = self.transformer(feats, torch.zeros_like(feats), tokens)
        return box_tokens + torch.tanh(self.alpha) * out


class SAMMaskHead(nn.Module):
    """
    Args:
        visual_dim, text_dim: widths of the visual tokens and decoder text features the adapter reads.
        dim: SAM's prompt / embedding width (256).
        freeze_decoder: freeze SAM's mask decoder (official).
        adapter_depth, adapter_num_heads, adapter_mlp_dim: the adapter's TwoWayTransformer.
    """

    @configurable
    def __init__(
        self,
        *,
        visual_dim: int,
        text_dim: int,
        dim: int = 256,
        freeze_decoder: bool = True,
        adapter_depth: int = 2,
        adapter_num_heads: int = 8,
        adapter_mlp_dim: int = 2048,
    ):
        super().__init__()
        # SAM's own decoder configuration (segment_anything/build_sam.py); for a custom (tiny) SAM width the MLP
        # keeps SAM's 8x ratio.
        self.decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=8 * dim, num_heads=8),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        if freeze_decoder:
            for p in self.decoder.parameters():
                p.requires_grad_(False)
        self.adapter = MaskAdapter(visual_dim, text_dim, dim, adapter_depth, adapter_num_heads, adapter_mlp_dim)

    @classmethod
    def from_config(cls, cfg, visual_dim: int, text_dim: int):
        m = cfg.MODEL.PIXELLLM.MASK_HEAD
        return dict(
            visual_dim=visual_dim,
            text_dim=text_dim,
            dim=cfg.MODEL.PIXELLLM.SAM.OUT_CHANS,
            freeze_decoder=m.FREEZE_DECODER,
            adapter_depth=m.ADAPTER_DEPTH,
            adapter_num_heads=m.ADAPTER_NUM_HEADS,
            adapter_mlp_dim=m.ADAPTER_MLP_DIM,
        )

    def forward(
        self,
        sam_embedding: torch.Tensor,
        image_index: torch.Tensor,
        box_tokens: torch.Tensor,
        visual_tokens: torch.Tensor,
        text_feats: torch.Tensor,
        text_mask: torch.Tensor,
        dense_pe: torch.Tensor,
        no_mask_embed: torch.Tensor,
    ):
        """
        Args:
            sam_embedding: (B, dim, h, w) SAM image embeddings.
            image_index: (Q,) image of each query.
            box_tokens: (Q, 2, dim) SAM embeddings of the query boxes.
            visual_tokens, text_feats, text_mask: the adapter's inputs (see MaskAdapter).
            dense_pe: (1, dim, h, w) positional encoding of SAM's grid; no_mask_embed: (dim,).
        Returns:
            logits: (Q, 4h, 4w) low-resolution mask logits over the padded input.
            iou: (Q,) predicted mask IoU.
        """
        tokens = self.adapter(box_tokens, visual_tokens, text_feats, text_mask)
        _, dim, h, w = sam_embedding.shape
        order, logits, iou = [], [], []
        # SAM's decoder repeats one image embedding per prompt, so it runs once per image.
        for b in image_index.unique().tolist():
            sel = (image_index == b).nonzero(as_tuple=True)[0]
            dense = no_mask_embed.view(1, dim, 1, 1).expand(len(sel), dim, h, w)
            masks, pred_iou = self.decoder(sam_embedding[b : b + 1], dense_pe, tokens[sel], dense, multimask_output=False)
            order.append(sel)
            logits.append(masks[:, 0])
            iou.append(pred_iou[:, 0])
        inverse = torch.empty_like(image_index)
        inverse[torch.cat(order)] = torch.arange(len(image_index), device=image_index.device)
        logits, iou = torch.cat(logits)[inverse], torch.cat(iou)[inverse]
        return logits, iou
