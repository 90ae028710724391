"""Dense-captioning mAP on Visual Genome: the DenseCap protocol exactly as the official PixelLLM evaluator
(scenic `pixel_llm/densecap_evaluator.py`, itself a port of densecap's `eval_utils.lua`) computes it.

1. Per image, GT boxes are merged greedily: the box overlapping the most boxes at IoU >= 0.7 (itself included;
   ties: the first) takes all of them; the merged box is their mean, and it keeps all their captions.
2. Predictions are sorted by score. Each looks only at its max-IoU merged GT (not the best still-available one);
   it is matched when that IoU > 0 and the GT is not yet taken, and then takes it.
3. A matched prediction is a true positive at (IoU t, METEOR m) when IoU >= t and METEOR > m (strict), METEOR
   between its caption and the merged GT's captions. A merged GT with an empty caption scores the pair
   ("EMPTY", ["EMPTY"]) instead (the official `ignore_empty_string`).
4. AP at (t, m): all predictions of all images pooled and sorted by score, precision/recall with
   positives = merged GT boxes, AP = mean over r = 0, 0.01, ..., 0.99 of the max precision at recall >= r.
   mAP = mean over t in {0.3, ..., 0.7} x m in {0, 0.05, ..., 0.25}; mAP_detection = the same with m = -1.

Boxes are [x, y, w, h] in original-image pixels. Equal scores keep the order of the ground-truth file's images,
then of the prediction file. The official code computes IoUs of merged boxes in float32 and we in float64: decisions
agree except for IoUs within ~1e-7 of a threshold.
"""
import logging
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torchvision.ops import box_iou

from .ground_truth import parse_vg
from .records import group_by_image
from .scorer import Scorer

__all__ = [
    "IOU_THRESHOLDS", "METEOR_THRESHOLDS", "GT_MERGE_IOU", "pairwise_iou_xywh", "merge_gt_boxes",
    "match_predictions", "average_precision", "DenseCapScorer",
]

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
METEOR_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
# GT boxes overlapping at IoU >= this are merged into one.
GT_MERGE_IOU = 0.7
# What the official evaluator scores instead of a match whose GT has an empty caption.
_EMPTY = "EMPTY"


def pairwise_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of [N, 4] and [M, 4] XYWH boxes -> float64 [N, M]; 0 where the union is empty (degenerate boxes)."""
    a = torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    iou = box_iou(torch.cat([a[:, :2], a[:, :2] + a[:, 2:]], 1), torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1))
    return torch.nan_to_num(iou, nan=0.0).numpy()


def merge_gt_boxes(
    boxes: np.ndarray, captions: Sequence[str], iou_threshold: float = GT_MERGE_IOU
) -> Tuple[np.ndarray, List[List[str]]]:
    """Merge one image's GT regions (step 1 of the module docstring).

    Args:
        boxes: float [N, 4] XYWH.
        captions: N strings (newlines are removed, as the official evaluator does).

    Returns:
        merged: float64 [M, 4] XYWH, M <= N, in merge order (largest group first);
        references: M lists of the captions of each group, in the input order.
        Zero-area boxes overlap nothing, not even themselves, so they are dropped (as in the official code).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    can_merge = pairwise_iou_xywh(boxes, boxes) >= iou_threshold
    merged, references = [], []
    while True:
        counts = can_merge.sum(axis=1)
        seed = int(np.argmax(counts)) if len(counts) else 0
        if not len(counts) or counts[seed] == 0:
            break
        group = np.nonzero(can_merge[seed])[0]
        merged.append(boxes[group].mean(axis=0))
        references.append([captions[i].replace("\n", "") for i in group])
        can_merge[group, :] = False
        can_merge[:, group] = False
    return np.asarray(merged, dtype=np.float64).reshape(-1, 4), references


def match_predictions(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match one image's predictions, already sorted by descending score, to its merged GT (step 2).

    Args:
        pred_boxes: float [P, 4] XYWH; gt_boxes: float [M, 4] XYWH.

    Returns:
        matched: bool [P]; iou: float64 [P], IoU with the max-IoU GT (-1 when the image has no GT);
        gt_index: int64 [P], that GT's index (-1 when the image has no GT).
    """
    num_preds = len(pred_boxes)
    if len(gt_boxes) == 0:
        return np.zeros(num_preds, bool), np.full(num_preds, -1.0), np.full(num_preds, -1, np.int64)
    ious = pairwise_iou_xywh(pred_boxes, gt_boxes)
    gt_index = ious.argmax(axis=1)
    best = ious[np.arange(num_preds), gt_index]
    matched = np.zeros(num_preds, bool)
    taken = np.zeros(len(gt_boxes), bool)
    for i in range(num_preds):
        if best[i] > 0 and not taken[gt_index[i]]:
            matched[i] = taken[gt_index[i]] = True
    return matched, best, gt_index.astype(np.int64)


def average_precision(is_tp: np.ndarray, num_positives: int) -> float:
    """100-point interpolated AP (step 4).

    Args:
        is_tp: bool [P], true positives of predictions sorted by descending score.
        num_positives: number of GT objects.

    Returns:
        mean over r = 0, 0.01, ..., 0.99 of the max precision at recall >= r (0 where no point reaches r),
        in [0, 1]; 0 without predictions or positives.
    """
    is_tp = np.asarray(is_tp, bool)
    if len(is_tp) == 0 or num_positives == 0:
        return 0.0
    tp = np.cumsum(is_tp)
    recall = tp / num_positives
    precision = tp / np.arange(1, len(is_tp) + 1)
    best_after = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at this point or later
    first = np.searchsorted(recall, np.arange(100) / 100, side="left")  # first point with recall >= r
    reached = first < len(recall)
    return float(np.where(reached, best_after[np.minimum(first, len(recall) - 1)], 0.0).mean())


class DenseCapScorer(Scorer):
    """Dense-captioning mAP of prediction records (`bbox`, `score`, `caption`) against a GRiT-style VG json
    (module docstring). Merging, matching and METEOR happen once at construction; `score(image_ids)` pools the
    images it is given. Without a `meteor`, only the detection metrics are reported. Arguments as `Scorer`."""

    task = "densecap"
    fields = ("bbox", "score", "caption")

    def _parse(self, gt):
        return parse_vg(gt, self.gt_source)

    def _setup(self, sizes, regions, predictions):
        by_image = group_by_image(predictions)
        self.image_ids = list(sizes)
        self._per_image: Dict[Any, dict] = {}
        hypotheses, references, slots = [], [], []
        num_before = num_after = 0
        for image_id in self.image_ids:
            gt_boxes, gt_refs = merge_gt_boxes(
                np.asarray([r["bbox"] for r in regions[image_id]]), [r["caption"] for r in regions[image_id]]
            )
            num_before += len(regions[image_id])
            num_after += len(gt_boxes)
            preds = sorted(by_image.get(image_id, []), key=lambda rec: -rec["score"])
            matched, iou, gt_index = match_predictions(np.asarray([p["bbox"] for p in preds]), gt_boxes)
            for i in np.nonzero(matched)[0]:
                refs = gt_refs[gt_index[i]]
                hyp = preds[i]["caption"]
                if "" in refs:
                    hyp, refs = _EMPTY, [_EMPTY]
                hypotheses.append(hyp)
                references.append(refs)
                slots.append((image_id, i))
            self._per_image[image_id] = {
                "scores": np.asarray([p["score"] for p in preds], dtype=np.float64),
                "matched": matched, "iou": iou, "meteor": np.full(len(preds), np.nan), "num_gt": len(gt_boxes),
            }
        logger.info(f"Dense captioning: {len(self.image_ids)} images, {num_before} GT regions merged into "
                    f"{num_after}, {len(predictions)} predictions, {len(slots)} matched")
        if self.meteor is not None and slots:
            _, per_pair = self.meteor.score(hypotheses, references)
            for (image_id, i), value in zip(slots, per_pair):
                self._per_image[image_id]["meteor"][i] = value

    def score(self, image_ids: Sequence[Any]) -> Dict[str, float]:
        """mAP (with METEOR), mAP_detection, and the AP of every threshold pair, as fractions in [0, 1], over `image_ids`."""
        parts = [self._per_image[i] for i in image_ids]
        cat = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0)
               for k in ("scores", "matched", "iou", "meteor")}
        num_positives = sum(p["num_gt"] for p in parts)
        order = np.argsort(-cat["scores"], kind="stable")
        matched, iou, meteor = cat["matched"][order].astype(bool), cat["iou"][order], cat["meteor"][order]
        results, per_pair, detection = {}, {}, {}
        for t in IOU_THRESHOLDS:
            hit = matched & (iou >= t)
            detection[f"mAP_detection_iou{t:.1f}"] = average_precision(hit, num_positives)
            if self.meteor is not None:
                for m in METEOR_THRESHOLDS:
                    per_pair[f"mAP_iou{t:.1f}_meteor{m:.2f}"] = average_precision(
                        hit & (np.nan_to_num(meteor, nan=-1.0) > m), num_positives
                    )
        if self.meteor is not None:
            results["mAP"] = float(np.mean(list(per_pair.values())))
        results["mAP_detection"] = float(np.mean(list(detection.values())))
        results.update(per_pair)
        results.update(detection)
        return results
