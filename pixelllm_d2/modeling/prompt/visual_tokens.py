"""Box and point prompts -> visual tokens: SAM's prompt encoder, then the prompt feature extractor over the fused
map. Queries with the same prompt on the same image share one extractor pass."""
import torch

from ...structures import Queries

__all__ = ["encode_boxes", "encode_prompts"]


def encode_boxes(prompt_encoder, prompt_extractor, fused: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Visual tokens (K, V, out_dim) of K box prompts.

    Args:
        prompt_encoder: a `SAMPromptEncoder`; prompt_extractor: e.g. `TwoWayPromptExtractor`.
        fused: (B, C, H, W) the fused image map. image_index: (K,) the image of each box.
        boxes: (K, 4) XYXY, padded-input pixels.
    """
    pe = prompt_encoder
    grid = tuple(fused.shape[-2:])
    return prompt_extractor(fused, image_index, pe(boxes=boxes), pe.dense(boxes, grid), pe.dense_pe(grid))


def encode_prompts(prompt_encoder, prompt_extractor, fused: torch.Tensor, q: Queries) -> torch.Tensor:
    """Visual tokens (Q, V, out_dim) of the queries' box or point prompts (`q.boxes`, `q.points` where
    `q.has_points`). Queries with the same box on the same image (e.g. the whole-image box of several referring
    expressions) share one extractor pass."""
    if not q.has_points.any():
        key = torch.cat([q.image_index[:, None].to(q.boxes.dtype), q.boxes], dim=1)
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
        if len(uniq) < len(q):
            return encode_boxes(prompt_encoder, prompt_extractor, fused, uniq[:, 0].long(), uniq[:, 1:])[inverse]
    pe = prompt_encoder
    n = len(q)
    tokens = None
    for rows, kwargs in (
        (~q.has_points, lambda idx: dict(boxes=q.boxes[idx])),
        (q.has_points, lambda idx: dict(points=q.points[idx], point_labels=q.point_labels[idx])),
    ):
        idx = rows.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        t = pe(**kwargs(idx))
        if tokens is None:
            tokens = t.new_zeros(n, t.shape[1], t.shape[2])
        if t.shape[1] > tokens.shape[1]:
            tokens = torch.cat([tokens, pe.no_mask_embed.expand(n, t.shape[1] - tokens.shape[1], -1)], 1)
        elif t.shape[1] < tokens.shape[1]:
            t = torch.cat([t, pe.no_mask_embed.expand(len(idx), tokens.shape[1] - t.shape[1], -1)], 1)
        tokens = tokens.index_put((idx,), t)
    grid = tuple(fused.shape[-2:])
    boxes = q.boxes * (~q.has_points)[:, None].to(q.boxes.dtype)  # point prompts get no dense box
    return prompt_extractor(fused, q.image_index, tokens, pe.dense(boxes, grid), pe.dense_pe(grid))
