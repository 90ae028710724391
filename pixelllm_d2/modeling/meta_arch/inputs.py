"""Model inputs (docs/DESIGN.md §2) -> validated, padded `Queries`, and the images -> one padded batch."""
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from ...structures import Queries, validate_boxes
from ...tasks import get_task

__all__ = ["ImageFeatures", "gather_queries", "empty_queries", "pad_images"]


def _where(record: Dict, key: str, i: int) -> str:
    return f"input {i} ({record.get('file_name', 'no file_name')}): {key}"


def pad_images(batched_inputs: List[Dict], image_size: int, device) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """The uint8 (3, h, w) RGB images (longest side <= image_size) zero-padded to one float (B, 3, S, S) batch,
    and their (h, w)."""
    images = torch.zeros(len(batched_inputs), 3, image_size, image_size, device=device)
    sizes = []
    for i, x in enumerate(batched_inputs):
        img = x.get("image")
        where = f"input {i} ({x.get('file_name', 'no file_name')})"
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"{where}: 'image' must be a torch.Tensor (3, h, w) uint8 RGB, got {type(img).__name__}")
        if img.dtype != torch.uint8:
            raise TypeError(f"{where}: 'image' must be uint8 RGB in 0-255, got dtype {img.dtype}")
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"{where}: 'image' must have shape (3, h, w) (RGB, channels first), got {tuple(img.shape)}")
        h, w = img.shape[-2:]
        if max(h, w) > image_size or min(h, w) < 1:
            raise ValueError(f"{where}: image is {w}x{h}; resize it so the longest side is at most INPUT.IMAGE_SIZE={image_size}")
        images[i, :, :h, :w] = img.to(device, torch.float32)
        sizes.append((int(h), int(w)))
    return images, sizes


def empty_queries(pad_id: int, device) -> Queries:
    return Queries(
        pad_id, image_index=torch.zeros(0, dtype=torch.long, device=device), image_wh=torch.zeros(0, 2, device=device),
        boxes=torch.zeros(0, 4, device=device), context_ids=torch.zeros(0, 1, dtype=torch.long, device=device), task=[],
    )


def _image_queries(i: int, x: Dict, pad_id: int, eos_id: int, require_targets: bool):
    """The validated queries of input `i` (on the CPU), or None when it has none."""
    task = x["task"]
    h, w = x["image"].shape[-2:]
    ctx = torch.as_tensor(x["context_ids"], dtype=torch.long)
    if ctx.dim() != 2:
        raise ValueError(f"{_where(x, 'context_ids', i)} must be (Q, C) int64, got shape {tuple(ctx.shape)}")
    q = ctx.shape[0]
    if q == 0:
        return None
    fields = dict(
        image_index=torch.full((q,), i, dtype=torch.long), image_wh=torch.tensor([[w, h]], dtype=torch.float32).repeat(q, 1),
        context_ids=ctx, task=[task] * q,
    )
    if x.get("prompt_points") is not None:
        pts = torch.as_tensor(x["prompt_points"], dtype=torch.float32)
        if pts.dim() != 3 or pts.shape[0] != q or pts.shape[2] != 2:
            raise ValueError(f"{_where(x, 'prompt_points', i)} must be ({q}, P, 2), got {tuple(pts.shape)}")
        if not torch.isfinite(pts).all() or (pts < 0).any() or (pts[..., 0] > w).any() or (pts[..., 1] > h).any():
            raise ValueError(f"{_where(x, 'prompt_points', i)} outside the {w}x{h} image: {pts.tolist()}")
        labels = x.get("prompt_point_labels")
        fields.update(
            points=pts, boxes=torch.zeros(q, 4), has_points=torch.ones(q, dtype=torch.bool),
            point_labels=torch.ones(pts.shape[:2], dtype=torch.long) if labels is None else torch.as_tensor(labels, dtype=torch.long),
        )
    else:
        boxes = x.get("prompt_boxes")
        boxes = torch.tensor([[0.0, 0.0, w, h]]).repeat(q, 1) if boxes is None else torch.as_tensor(boxes, dtype=torch.float32)
        if boxes.shape != (q, 4):
            raise ValueError(f"{_where(x, 'prompt_boxes', i)} must be ({q}, 4) XYXY, got {tuple(boxes.shape)}")
        validate_boxes(boxes, h, w, what=_where(x, "prompt_boxes (resized-image pixels)", i))
        fields["boxes"] = boxes
    tgt = x.get("target_ids")
    if tgt is None and require_targets:
        raise ValueError(f"{_where(x, 'target_ids', i)} missing: training needs target text")
    if tgt is not None:
        tgt = torch.as_tensor(tgt, dtype=torch.long)
        if tgt.dim() != 2 or tgt.shape[0] != q:
            raise ValueError(f"{_where(x, 'target_ids', i)} must be ({q}, T), got {tuple(tgt.shape)}")
        if get_task(task).context_text and ((tgt[:, 0] == eos_id) | (tgt[:, 0] == pad_id)).any():
            raise ValueError(f"{_where(x, 'target_ids', i)}: empty referring expression")
        fields["target_ids"] = tgt
    tb = x.get("token_boxes")
    if tb is not None:
        tb = torch.as_tensor(tb, dtype=torch.float32)
        if tgt is None or tb.shape != (*tgt.shape, 4):
            raise ValueError(f"{_where(x, 'token_boxes', i)} must be (Q, T, 4) like target_ids, got {tuple(tb.shape)}")
        fields["token_boxes"] = tb
    rb = x.get("ref_boxes")
    if rb is not None:
        rb = torch.as_tensor(rb, dtype=torch.float32)
        validate_boxes(rb, h, w, what=_where(x, "ref_boxes (resized-image pixels)", i))
        fields["ref_boxes"] = rb
    gm = x.get("gt_masks")
    if gm is not None:
        gm = torch.as_tensor(gm).bool()
        if gm.shape != (q, h, w):
            raise ValueError(f"{_where(x, 'gt_masks', i)} must be ({q}, {h}, {w}), got {tuple(gm.shape)}")
        fields["gt_masks"] = list(gm)
    return Queries(pad_id, **fields)


def gather_queries(batched_inputs: List[Dict], device, pad_id: int, eos_id: int, require_targets: bool = False) -> Queries:
    """Validate and flatten the queries of every image whose task has queries of its own (the detector's images
    have none: their proposals are captioned by the dense-captioning glue). Images without `prompt_boxes` /
    `prompt_points` get the whole-image box for each context row.

    Args:
        batched_inputs: model inputs (docs/DESIGN.md §2).
        device: where the queries go.
        pad_id, eos_id: the tokenizer's pad and EOS ids.
        require_targets: training: every image must carry `target_ids`.
    Raises:
        ValueError / TypeError naming the input, its file and the key.
    """
    parts = []
    for i, x in enumerate(batched_inputs):
        try:
            task = get_task(x.get("task"))
        except ValueError as e:
            raise ValueError(f"{_where(x, 'task', i)}: {e}") from None
        if task.queries == "detector":
            continue
        part = _image_queries(i, x, pad_id, eos_id, require_targets)
        if part is not None:
            parts.append(part)
    return Queries.cat(parts).to(device) if parts else empty_queries(pad_id, device)


@dataclass
class ImageFeatures:
    """The backbone's output for a batch of images, reusable across prompts (`PixelLLM.encode_images`).

    fused: (B, C, H, W) the fused map (prompt extractor, location head, detector).
    sam: (B, C_sam, Hs, Ws) SAM's image embedding (mask decoder).
    sizes: the unpadded (h, w) of each image.
    """

    fused: torch.Tensor
    sam: torch.Tensor
    sizes: List[Tuple[int, int]]
