"""Referring localization and segmentation metrics (RefCOCO / RefCOCO+ / RefCOCOg), one unit per expression.

- `P@0.5`: share of expressions whose predicted box has IoU strictly > 0.5 with the GT box (original pixels).
- `mask_cIoU`: sum over expressions of the mask intersections / sum of the unions (the official README's number).
- `mask_mIoU`: mean over expressions of the mask IoU (the official `seg_gIoU`).
- `mask_P@0.5`: share of expressions whose mask IoU is strictly > 0.5 (the official `seg_AP`).
- `mask_box_P@0.5`: share of expressions whose predicted mask's bounding box has IoU strictly > 0.5 with the GT box
  (the official evaluator's P@0.5 of the mask box; an empty mask has no box and is a miss).
All fractions in [0, 1]. Masks are scored as COCO RLEs in original pixels (pycocotools); an expression whose prediction and
GT masks are both empty has IoU 0, as in the official code. An expression without a prediction counts as a miss
(box IoU 0, empty mask) and is logged.
"""
import logging
from typing import Any, Dict, Sequence

import numpy as np
from pycocotools import mask as mask_util

from ..structures.masks import segmentation_to_rle as segmentation_rle
from .densecap import pairwise_iou_xywh
from .ground_truth import parse_refer
from .records import index_records
from .scorer import Scorer

__all__ = ["segmentation_rle", "mask_intersection_union", "ReferScorer"]

logger = logging.getLogger(__name__)


def mask_intersection_union(a: dict, b: dict):
    """(intersection, union) pixel counts of two RLEs of the same image."""
    inter = int(mask_util.area(mask_util.merge([a, b], intersect=True)))
    return inter, int(mask_util.area(a)) + int(mask_util.area(b)) - inter


class ReferScorer(Scorer):
    """Referring metrics of prediction records (`sent_id`, `bbox`, optional `segmentation`) against a refer json.

    Mask metrics are reported when every GT expression has a `segmentation` and the predictions have masks.
    Arguments as `Scorer` (METEOR is not used).
    """

    task = "refer"
    fields = ("sent_id", "bbox")

    def _parse(self, gt):
        return parse_refer(gt, self.gt_source)

    def _setup(self, sizes, sentences, predictions):
        gt_source, pred_source = self.gt_source, self.pred_source
        known = {s["sent_id"]: image_id for image_id, sents in sentences.items() for s in sents}
        by_sent = index_records(predictions, "sent_id", known, pred_source, gt_source)
        all_sents = [s for sents in sentences.values() for s in sents]
        self.with_masks = bool(all_sents) and all(s["segmentation"] is not None for s in all_sents) and any(
            "segmentation" in rec for rec in predictions)
        self.image_ids = [image_id for image_id, sents in sentences.items() if sents]
        self._per_image: Dict[Any, np.ndarray] = {}  # [S, 4]: box IoU, mask intersection, mask union, mask-box IoU
        missing = 0
        for image_id in self.image_ids:
            height, width = sizes[image_id]
            rows = []
            for s in sentences[image_id]:
                rec = by_sent.get(s["sent_id"])
                missing += rec is None
                box_iou = 0.0 if rec is None else float(pairwise_iou_xywh(rec["bbox"], s["bbox"])[0, 0])
                inter = union = 0
                mask_box_iou = 0.0
                if self.with_masks:
                    where = f"{gt_source}: sent_id {s['sent_id']!r}"
                    gt_mask = segmentation_rle(s["segmentation"], int(height), int(width), where)
                    if rec is None or "segmentation" not in rec:
                        inter, union = 0, int(mask_util.area(gt_mask))
                    else:
                        pred_where = f"{pred_source}: sent_id {s['sent_id']!r}"
                        pred_mask = segmentation_rle(rec["segmentation"], int(height), int(width), pred_where)
                        inter, union = mask_intersection_union(pred_mask, gt_mask)
                        if mask_util.area(pred_mask) > 0:
                            mask_box = mask_util.toBbox(pred_mask).tolist()
                            mask_box_iou = float(pairwise_iou_xywh(mask_box, s["bbox"])[0, 0])
                rows.append((box_iou, inter, union, mask_box_iou))
            self._per_image[image_id] = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        if missing:
            logger.warning(f"{pred_source}: {missing} of {len(all_sents)} expressions have no prediction; they count "
                           "as misses")

    def score(self, image_ids: Sequence[Any]) -> Dict[str, float]:
        """P@0.5 and, with masks, mask_cIoU, mask_mIoU, mask_P@0.5, mask_box_P@0.5, as fractions, over the
        expressions of `image_ids`."""
        rows = np.concatenate([self._per_image[i] for i in image_ids]) if image_ids else np.zeros((0, 4))
        if not len(rows):
            raise ValueError("refer: no expressions to score")
        results = {"P@0.5": float(np.mean(rows[:, 0] > 0.5))}
        if self.with_masks:
            inter, union = rows[:, 1], rows[:, 2]
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            results["mask_cIoU"] = float(inter.sum() / union.sum()) if union.sum() > 0 else 0.0
            results["mask_mIoU"] = float(iou.mean())
            results["mask_P@0.5"] = float(np.mean(iou > 0.5))
            results["mask_box_P@0.5"] = float(np.mean(rows[:, 3] > 0.5))
        return results
