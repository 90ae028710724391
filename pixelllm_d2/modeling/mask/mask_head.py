"""Referring masks: SAM's mask decoder prompted with the (predicted) referring box, plus PixelLLM's mask adapter —
a small TwoWayTransformer whose 2 learned tokens read the query's visual tokens and text features and are added,
gated by tanh(alpha) (alpha zero-initialised), to SAM's 2 box-corner tokens."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from torch import nn

from ...config import configurable
from ...structures import jitter_boxes, points_to_boxes
from ..losses import mask_losses

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
        image_size: side of the padded input; masks are predicted over it.
        max_text_len: the adapter's text is padded to this many tokens (SAM's transformer has no key mask, so a
            mask would otherwise depend on the other texts of its batch).
        train_prompt: the box prompt in training: "pred" (the predicted box, detached) or "gt".
        train_box_noise: with "gt", Gaussian noise on each corner, std this fraction of the box side (<= 20 px).
        train_max_queries: at most this many expressions of a batch train the head, drawn with torch's RNG (0: all).
        focal_weight, dice_weight, iou_weight: loss weights (SAM's recipe, official: 20, 1, 1).
        focal_alpha: alpha of the focal loss (official 0.5, SAM's 0.25).
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
        image_size: int = 384,
        max_text_len: int = 40,
        train_prompt: str = "pred",
        train_box_noise: float = 0.0,
        train_max_queries: int = 0,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        focal_alpha: float = 0.5,
    ):
        super().__init__()
        if train_prompt not in ("pred", "gt"):
            raise ValueError(f"mask head train_prompt (MASK_HEAD.TRAIN_PROMPT) must be 'pred' or 'gt', got {train_prompt!r}")
        if train_box_noise < 0:
            raise ValueError(f"mask head train_box_noise (MASK_HEAD.TRAIN_BOX_NOISE) must be >= 0, got {train_box_noise}")
        if train_max_queries < 0:
            raise ValueError(f"mask head train_max_queries (MASK_HEAD.TRAIN_MAX_QUERIES) must be >= 0 (0 = all), got {train_max_queries}")
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.train_prompt = train_prompt
        self.train_box_noise = train_box_noise
        self.train_max_queries = train_max_queries
        if not 0.0 <= focal_alpha <= 1.0:
            raise ValueError(f"mask focal alpha (LOSS.MASK_FOCAL_ALPHA) must be in [0, 1], got {focal_alpha}")
        self.weights = dict(focal=focal_weight, dice=dice_weight, iou=iou_weight)
        self.focal_alpha = focal_alpha
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
        m, loss = cfg.MODEL.PIXELLLM.MASK_HEAD, cfg.MODEL.PIXELLLM.LOSS
        return dict(
            visual_dim=visual_dim,
            text_dim=text_dim,
            dim=cfg.MODEL.PIXELLLM.SAM.OUT_CHANS,
            freeze_decoder=m.FREEZE_DECODER,
            adapter_depth=m.ADAPTER_DEPTH,
            adapter_num_heads=m.ADAPTER_NUM_HEADS,
            adapter_mlp_dim=m.ADAPTER_MLP_DIM,
            image_size=cfg.INPUT.IMAGE_SIZE,
            max_text_len=cfg.MODEL.PIXELLLM.LANGUAGE.MAX_TEXT_LEN,
            train_prompt=m.TRAIN_PROMPT,
            train_box_noise=m.TRAIN_BOX_NOISE,
            train_max_queries=m.TRAIN_MAX_QUERIES,
            focal_weight=loss.MASK_FOCAL_WEIGHT,
            dice_weight=loss.MASK_DICE_WEIGHT,
            iou_weight=loss.MASK_IOU_WEIGHT,
            focal_alpha=loss.MASK_FOCAL_ALPHA,
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
        # SAM's decoder (MaskDecoder.predict_masks, single-mask output) over all queries at once: each query reads
        # its own image's embedding, where MaskDecoder.forward repeats one image per call (a loop over images).
        d = self.decoder
        src = sam_embedding[image_index] + no_mask_embed.view(1, dim, 1, 1)
        q = len(image_index)
        out_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight]).unsqueeze(0).expand(q, -1, -1)
        hs, src = d.transformer(src, dense_pe.expand(q, -1, -1, -1), torch.cat([out_tokens, tokens], dim=1))
        up = d.output_upscaling(src.transpose(1, 2).reshape(q, dim, h, w))
        # multimask_output=False keeps mask token 0 only: the other tokens' hypernetworks would be discarded
        hyper = d.output_hypernetworks_mlps[0](hs[:, 1])
        logits = (hyper[:, None] @ up.flatten(2)).view(q, *up.shape[-2:])
        iou = d.iou_prediction_head(hs[:, 0])[:, 0]
        return logits, iou

    def predict(self, sam_embedding: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor, prompt_encoder,
                visual_tokens: torch.Tensor, text_feats: torch.Tensor, text_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Masks of Q queries prompted with `boxes`.

        Args:
            sam_embedding: (B, dim, h, w) SAM image embeddings. image_index: (Q,).
            boxes: (Q, 4) XYXY box prompts, padded-input pixels.
            prompt_encoder: the model's `SAMPromptEncoder` (box embeddings, SAM's grid encoding, "no mask").
            visual_tokens: (Q, V, visual_dim); text_feats: (Q, T, text_dim); text_mask: (Q, T) bool.
        Returns:
            logits: (Q, S, S) mask logits over the padded input (S = image_size); iou: (Q,) predicted IoU.
        """
        extra = self.max_text_len - text_feats.shape[1]
        if extra > 0:  # always MAX_TEXT_LEN tokens: a query's mask never depends on the other texts of its batch
            text_feats = F.pad(text_feats, (0, 0, 0, extra))
            text_mask = F.pad(text_mask, (0, extra), value=False)
        pe = prompt_encoder
        logits, iou = self(sam_embedding, image_index, pe.embed_boxes(boxes), visual_tokens, text_feats, text_mask,
                           pe.dense_pe(tuple(sam_embedding.shape[-2:])), pe.no_mask_embed)
        size = (self.image_size, self.image_size)
        return F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0], iou

    def losses(self, sam_embedding: torch.Tensor, image_index: torch.Tensor, pred_boxes: torch.Tensor,
               gt_boxes: torch.Tensor, image_wh: torch.Tensor, gt_masks: List[Optional[torch.Tensor]], prompt_encoder,
               visual_tokens: torch.Tensor, text_feats: torch.Tensor, text_mask: torch.Tensor, share: float) -> Dict[str, torch.Tensor]:
        """The weighted mask losses of the referring queries (at most `train_max_queries` of those with a GT mask).

        Args:
            sam_embedding, image_index, prompt_encoder, visual_tokens, text_feats, text_mask: as in `predict`,
                one row per referring query.
            pred_boxes: (Q, 4) predicted box corners (x0, y0, x1, y1); gt_boxes: (Q, 4) their GT boxes.
            image_wh: (Q, 2) unpadded image sizes. gt_masks: Q (h, w) bool masks, or None for a query without one.
            share: the batch share of the referring images (the official per-task loss scaling).
        Returns:
            {"loss_mask_focal", "loss_mask_dice", "loss_mask_iou"}, or {} when no query has a mask.
        """
        keep = torch.tensor([m is not None for m in gt_masks], dtype=torch.bool, device=pred_boxes.device).nonzero(as_tuple=True)[0]
        if len(keep) == 0:
            return {}
        if self.train_max_queries and len(keep) > self.train_max_queries:
            keep = keep[torch.randperm(len(keep), device=keep.device)[: self.train_max_queries]].sort().values
        if self.train_prompt == "gt":
            boxes = gt_boxes[keep]
            if self.train_box_noise > 0:
                boxes = jitter_boxes(boxes, self.train_box_noise, image_wh[keep])
        else:
            boxes = points_to_boxes(pred_boxes[keep].detach().unflatten(-1, (2, 2)))
        logits, iou = self.predict(sam_embedding, image_index[keep], boxes, prompt_encoder, visual_tokens[keep],
                                   text_feats[keep], text_mask[keep])
        s = self.image_size
        gt = torch.zeros(len(keep), s, s, dtype=torch.bool, device=logits.device)
        valid = torch.zeros_like(gt)
        for j, k in enumerate(keep.tolist()):
            h, w = gt_masks[k].shape
            gt[j, :h, :w] = gt_masks[k]
            valid[j, :h, :w] = True
        parts = mask_losses(logits, iou, gt, valid, self.focal_alpha)
        return {f"loss_mask_{k}": self.weights[k] * share * v for k, v in parts.items()}
