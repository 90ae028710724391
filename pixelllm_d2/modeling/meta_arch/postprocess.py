"""Post-processing (detectron2's `modeling/postprocessing.py`): one image's raw query results -> the output fields
of docs/DESIGN.md §3, in original-image pixels: boxes scaled and clipped, tokens grouped into words, masks pasted."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ...structures import Queries, points_to_boxes

__all__ = ["postprocess", "paste_mask"]


def paste_mask(logits: torch.Tensor, resized_hw: Tuple[int, int], orig_hw: Tuple[int, int]) -> torch.Tensor:
    """(S, S) logits over the padded input -> (H, W) bool mask of the original image (official: crop the valid
    area, bilinear resize, threshold at 0)."""
    h, w = resized_hw
    crop = logits[None, None, :h, :w]
    return F.interpolate(crop, size=tuple(orig_hw), mode="bilinear", align_corners=False)[0, 0] > 0


def postprocess(x: Dict, results: List[Dict], q: Optional[Queries], tokenizer, detections: Optional[Dict] = None) -> Dict:
    """The output dict of one input image.

    Args:
        x: the model input (its "image" (3, h, w) and optional original "height" / "width").
        results: per query {"token_ids" (T,), "token_corners" (T, 4), "score", optional "box" (4,) read at the last
            word, "mask_logits" (S, S), "mask_score"}; coordinates in resized pixels.
        q: the image's queries (prompt boxes), or None (dense captioning).
        tokenizer: a `TextTokenizer` (words, captions).
        detections: dense captioning: {"pred_boxes" (N, 4), "scores" (N,)} of the detector, one per result.
    Returns:
        the fields of docs/DESIGN.md §3 (without "task").
    """
    H, W = int(x.get("height", x["image"].shape[-2])), int(x.get("width", x["image"].shape[-1]))
    h, w = x["image"].shape[-2:]
    device = results[0]["token_corners"].device if results else torch.device("cpu")
    scale = torch.tensor([W / w, H / h, W / w, H / h], device=device)
    limit = torch.tensor([W, H, W, H], dtype=torch.float32, device=device)

    def to_orig(boxes):
        # ordered corners, scaled to the original image and clipped to it
        b = points_to_boxes(boxes.reshape(-1, 2, 2)).reshape(boxes.shape) if boxes.numel() else boxes
        return torch.minimum((b * scale.to(b.device)).clamp(min=0), limit.to(b.device))

    out = dict(captions=[], token_ids=[], token_boxes=[], token_corners=[], words=[], word_boxes=[], word_points=[])
    pred_boxes, scores, masks, mask_scores = [], [], [], []
    for k, r in enumerate(results):
        ids = r["token_ids"]
        tboxes = to_orig(r["token_corners"].float())
        words, t2w = tokenizer.group_words(ids.tolist())
        t2w = torch.tensor(t2w, dtype=torch.long, device=tboxes.device)
        wboxes = torch.zeros(len(words), 4, device=tboxes.device)
        for j in range(len(words)):
            wboxes[j] = tboxes[t2w == j].mean(dim=0)
        out["captions"].append(tokenizer.decode(ids.tolist()))
        out["token_ids"].append(ids.cpu())
        out["token_boxes"].append(tboxes.cpu())
        out["token_corners"].append((r["token_corners"].float() * scale.to(tboxes.device)).cpu())  # raw: as predicted
        out["words"].append(words)
        out["word_boxes"].append(wboxes.cpu())
        out["word_points"].append(((wboxes[:, :2] + wboxes[:, 2:]) / 2).cpu())
        if "box" in r:
            pred_boxes.append(to_orig(r["box"].float()))
        elif detections is None:  # the prompt box (region), or the whole image (caption, point prompts)
            prompt = q.boxes[k] if q is not None and not bool(q.has_points[k]) else None
            pred_boxes.append(to_orig(prompt) if prompt is not None else limit * torch.tensor([0, 0, 1, 1], device=device))
        scores.append(r["score"])
        if "mask_logits" in r:
            masks.append(paste_mask(r["mask_logits"], (h, w), (H, W)))
            mask_scores.append(r["mask_score"])
    if detections is not None:
        out["pred_boxes"] = to_orig(detections["pred_boxes"]).cpu()
        out["scores"] = detections["scores"].float().cpu()
    else:
        out["pred_boxes"] = torch.stack(pred_boxes).cpu() if pred_boxes else torch.zeros(0, 4)
        out["scores"] = torch.tensor(scores, dtype=torch.float32)
    if masks:
        out["pred_masks"] = torch.stack(masks).cpu()
        out["mask_scores"] = torch.tensor(mask_scores, dtype=torch.float32)
    return out
