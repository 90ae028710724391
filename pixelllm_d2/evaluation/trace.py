"""Trace metric `point_l1` (Localized Narratives), as the official `PointEvaluator` computes it.

For every valid token of a narrative (teacher-forced on the GT text; valid = its GT box is not all zeros), each of
the 2 predicted corner points (x0, y0), (x1, y1) takes the L1 distance (|dx| + |dy|) / 2 to the nearest of the
token's 2 GT corner points, coordinates normalised by the image width and height; the token's error is the mean
over the 2 predicted points. An image's error is the mean over its valid tokens (all its narratives together);
`point_l1` is the mean over images, in units of the image size (0 = perfect).

The ground truth's "trace_protocol" says which variant (TEST.TRACE_PROTOCOL): "official" (the predictions are the
raw predicted points, one narrative per image, an image without a valid token counts 0: the official
`PointEvaluator`) or "all_narratives" (the predictions are the ordered, clipped token boxes, every narrative of an
image, images without a valid token left out; the default of a file without the key).
"""
import logging
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from .ground_truth import parse_trace
from .records import index_records
from .scorer import Scorer

__all__ = ["token_point_l1", "TraceScorer"]

logger = logging.getLogger(__name__)


def _corners(boxes_xywh: np.ndarray, height: float, width: float) -> np.ndarray:
    """[K, 4] XYWH -> [K, 2 corners, 2 (x, y)] normalised by the image size."""
    corners = np.stack([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]], axis=1)
    return corners / np.array([width, height], dtype=np.float64)


def token_point_l1(pred_boxes: np.ndarray, gt_boxes: np.ndarray, height: float, width: float,
                   where: str = "trace") -> Tuple[float, int]:
    """Summed per-token corner L1 of one narrative and its number of valid tokens.

    Args:
        pred_boxes: float [T_p, 4] XYWH predicted token boxes (original pixels), position t = target token t.
        gt_boxes: float [T, 4] XYWH GT token boxes (original pixels), all zeros where a token has no target.
        height, width: original image size.

    Returns:
        (sum over valid tokens of the token error, number of valid tokens).
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    valid = np.nonzero((gt_boxes != 0).any(axis=1))[0]
    if not len(valid):
        return 0.0, 0
    if valid[-1] >= len(pred_boxes):
        raise ValueError(f"{where}: {len(pred_boxes)} predicted token boxes, but token {valid[-1]} has a GT box "
                         "(predictions must be teacher-forced on the GT text)")
    pred = _corners(pred_boxes[valid], height, width)[:, :, None, :]  # [K, 2 pred, 1, 2]
    gt = _corners(gt_boxes[valid], height, width)[:, None, :, :]  # [K, 1, 2 gt, 2]
    per_token = np.abs(pred - gt).mean(axis=-1).min(axis=-1).mean(axis=-1)
    return float(per_token.sum()), len(valid)


class TraceScorer(Scorer):
    """`point_l1` of prediction records (`query_index`, `token_boxes`) against a trace json. Arguments as `Scorer`
    (METEOR is not used)."""

    task = "trace"
    fields = ("query_index", "token_boxes")

    def _parse(self, gt):
        self._protocol = gt.get("trace_protocol", "all_narratives") if isinstance(gt, dict) else "all_narratives"
        if self._protocol not in ("official", "all_narratives"):
            raise ValueError(f"{self.gt_source}: trace_protocol must be 'official' or 'all_narratives', got {self._protocol!r}")
        return parse_trace(gt, self.gt_source)

    def _setup(self, sizes, queries, predictions):
        gt_source, pred_source = self.gt_source, self.pred_source
        known = {(image_id, q): image_id for image_id, narratives in queries.items() for q in narratives}
        by_query = index_records(predictions, ("image_id", "query_index"), known, pred_source, gt_source)
        self._per_image: Dict[Any, float] = {}
        for image_id, narratives in queries.items():
            height, width = sizes[image_id]
            total, count = 0.0, 0
            for q, gt_boxes in narratives.items():
                where = f"{pred_source}: image {image_id!r} query {q}"
                if not (gt_boxes != 0).any():
                    continue
                if (image_id, q) not in by_query:
                    raise ValueError(f"{where}: no prediction for a narrative with GT token boxes")
                s, n = token_point_l1(by_query[(image_id, q)]["token_boxes"], gt_boxes, height, width, where)
                total, count = total + s, count + n
            if count:
                self._per_image[image_id] = total / count
            elif self._protocol == "official":  # the official 1e-8 denominator: such an image counts 0
                self._per_image[image_id] = 0.0
        skipped = len(queries) - len(self._per_image)
        if skipped:
            logger.info(f"trace: {skipped} of {len(queries)} images have no token with a GT box; left out")
        self.image_ids = list(self._per_image)

    def score(self, image_ids: Sequence[Any]) -> Dict[str, float]:
        """{"point_l1": mean over `image_ids` of the per-image error}."""
        if not len(image_ids):
            raise ValueError("trace: no image with GT token boxes to score")
        return {"point_l1": float(np.mean([self._per_image[i] for i in image_ids]))}
