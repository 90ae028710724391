"""Prediction records: the COCO-style entries of `predictions.json`, built from model outputs (docs/DESIGN.md §3)
and read back (from our files or other systems') into one frame: `[x, y, w, h]` in original-image pixels.

A record holds `image_id`, `bbox`, `bbox_mode`, `score`, `caption`, and where the task has them `words`,
`word_boxes` (one box per word), `token_boxes` (one per token), `region_id`, `sent_id`, `ref_id`, `query_index`,
`segmentation` (COCO RLE of the predicted mask, original pixels). Every box field of a record uses its `bbox_mode`;
word and token boxes are two corner points (x0, y0), (x0 + w, y0 + h), so their w and h may be negative.
"""
import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..structures.boxes import BoxMode
from ..structures.masks import mask_to_rle as mask_rle

__all__ = [
    "BOX_FORMATS", "BOX_FIELDS", "xywh_lists", "output_records", "mask_rle", "normalize_predictions", "group_by_image",
    "require_fields", "index_records",
]

logger = logging.getLogger(__name__)

# Names accepted by `tools/evaluate.py --box-format`, and the BoxMode each means.
BOX_FORMATS = {"xywh": BoxMode.XYWH_ABS, "xyxy": BoxMode.XYXY_ABS, "cxcywh": BoxMode.CXCYWH_ABS}
_MODES_BY_NAME = {mode.name: mode for mode in BOX_FORMATS.values()}
# Record fields holding boxes: `bbox` is one box, the others a list of boxes.
BOX_FIELDS = ("bbox", "word_boxes", "token_boxes")


def xywh_lists(boxes_xyxy: torch.Tensor) -> List[List[float]]:
    """[N, 4] XYXY boxes -> N lists [x, y, w, h] (computed in float64 so w = x1 - x0 loses nothing)."""
    b = torch.as_tensor(boxes_xyxy).detach().cpu().to(torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], dim=1).tolist()


def output_records(inp: Mapping[str, Any], out: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The records common to every task for one image: result i of `out` (docs/DESIGN.md §3) becomes
    {image_id, bbox, bbox_mode, score, caption, words, word_boxes} (the last two where `out` has them)."""
    boxes = xywh_lists(out["pred_boxes"])
    scores = torch.as_tensor(out["scores"]).detach().cpu().to(torch.float64).reshape(-1).tolist()
    captions = list(out.get("captions", [""] * len(boxes)))
    if not len(boxes) == len(scores) == len(captions):
        raise ValueError(f"image {inp['image_id']!r}: model output has {len(boxes)} boxes, {len(scores)} scores and "
                         f"{len(captions)} captions")
    records = []
    for i in range(len(boxes)):
        rec = {"image_id": inp["image_id"], "bbox": boxes[i], "bbox_mode": "XYWH_ABS", "score": scores[i],
               "caption": captions[i]}
        if "words" in out:
            rec["words"] = list(out["words"][i])
        if "word_boxes" in out:
            rec["word_boxes"] = xywh_lists(out["word_boxes"][i])
        records.append(rec)
    return records


def _box_mode(rec: dict, box_format: Optional[str], where: str) -> BoxMode:
    stated = rec.get("bbox_mode")
    if stated is not None and stated not in _MODES_BY_NAME:
        raise ValueError(f"{where}: unknown bbox_mode {stated!r} (known: {sorted(_MODES_BY_NAME)})")
    if box_format is not None and box_format not in BOX_FORMATS:
        raise ValueError(f"unknown box format {box_format!r} (known: {sorted(BOX_FORMATS)})")
    if stated is None and box_format is None:
        raise ValueError(f"{where}: the record does not state its box format (no 'bbox_mode'); say which it is "
                         f"with --box-format {{{','.join(BOX_FORMATS)}}} (COCO / GRiT results: xywh)")
    if stated is not None and box_format is not None and _MODES_BY_NAME[stated] != BOX_FORMATS[box_format]:
        raise ValueError(f"{where}: the record says bbox_mode {stated} but --box-format {box_format} was given")
    return _MODES_BY_NAME[stated] if stated is not None else BOX_FORMATS[box_format]


def _to_xywh(boxes: Any, mode: BoxMode, scale: float, where: str, single: bool) -> Any:
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):  # ragged lists, strings
        arr = np.full(1, np.nan)
    if not single and arr.size == 0:
        arr = arr.reshape(0, 4)
    shaped = arr.shape == (4,) if single else (arr.ndim == 2 and arr.shape[1] == 4)
    if not shaped or not np.isfinite(arr).all():
        raise ValueError(f"{where}: expected {'4 finite numbers' if single else 'a list of 4-number boxes'}, "
                         f"got {boxes!r}")
    if mode == BoxMode.XYWH_ABS and scale == 1.0:
        out = boxes  # untouched, so a file we wrote scores bit-identically to the run that wrote it
    else:
        out = (BoxMode.convert(arr, mode, BoxMode.XYWH_ABS) * scale).tolist()
    # Word and token boxes are two predicted corner points, which may come in either order; a `bbox` may not.
    if single and (np.asarray(out, dtype=np.float64)[2:] < 0).any():
        raise ValueError(f"{where}: negative width or height after reading the box as {mode.name}: {boxes!r}; "
                         "is --box-format right?")
    return out


def normalize_predictions(
    predictions: Any,
    image_sizes: Mapping[Any, Tuple[Optional[float], Optional[float]]],
    box_format: Optional[str] = None,
    longest_side: float = 0,
    source: str = "predictions",
) -> List[Dict[str, Any]]:
    """Check prediction records and bring their boxes to `[x, y, w, h]` in original-image pixels.

    Args:
        predictions: list of record dicts (a parsed predictions.json, ours or another system's).
        image_sizes: {image_id: (height, width)} of the ground truth; a record of another image is an error.
        box_format: "xywh", "xyxy" or "cxcywh" for records without `bbox_mode` (it must agree where they have it).
        longest_side: when > 0, boxes are in a frame resized so the longest side is this many pixels (DenseCap /
            GRiT write a 720 frame) and are scaled back to the original image.
        source: names the file in errors.

    Returns:
        new records, every box field converted and `bbox_mode` "XYWH_ABS" where a record has boxes (other fields
        kept). Only `image_id` is required here; each task checks the fields it needs (`require_fields`).
    """
    if not isinstance(predictions, list):
        raise ValueError(f"{source}: expected a json list of prediction records")
    out, outside = [], 0
    for i, rec in enumerate(predictions):
        where = f"{source}: record {i}"
        if not isinstance(rec, dict) or "image_id" not in rec:
            raise ValueError(f"{where}: a record needs 'image_id'")
        if rec["image_id"] not in image_sizes:
            raise ValueError(f"{where}: image_id {rec['image_id']!r} is not in the ground truth (wrong file, or ids "
                             "of another type?)")
        new = dict(rec)
        height, width = image_sizes[rec["image_id"]]
        if any(field in rec for field in BOX_FIELDS):
            mode = _box_mode(rec, box_format, where)
            scale = 1.0
            if longest_side:
                if height is None or width is None:
                    raise ValueError(f"{where}: --pred-longest-side needs image sizes in the ground truth")
                scale = max(height, width) / float(longest_side)
            new["bbox_mode"] = "XYWH_ABS"
            for field in BOX_FIELDS:
                if field in rec:
                    new[field] = _to_xywh(rec[field], mode, scale, f"{where} '{field}'", single=field == "bbox")
        if "score" in rec and not (isinstance(rec["score"], (int, float)) and math.isfinite(rec["score"])):
            raise ValueError(f"{where}: 'score' must be a finite number, got {rec['score']!r}")
        if "caption" in rec and not isinstance(rec["caption"], str):
            raise ValueError(f"{where}: 'caption' must be a string, got {rec['caption']!r}")
        if "bbox" in new and height is not None and width is not None:
            x, y, w, h = new["bbox"]
            tol_x, tol_y = 0.02 * width, 0.02 * height
            outside += x < -tol_x or y < -tol_y or x + w > width + tol_x or y + h > height + tol_y
        out.append(new)
    if outside:
        logger.warning(f"{source}: {outside} of {len(out)} predicted boxes extend more than 2% outside their image; "
                       "check the box format (--box-format) and frame (--pred-longest-side)")
    return out


def group_by_image(records: Sequence[dict]) -> Dict[Any, List[dict]]:
    """{image_id: [records of that image in file order]}."""
    groups: Dict[Any, List[dict]] = {}
    for rec in records:
        groups.setdefault(rec["image_id"], []).append(rec)
    return groups


def require_fields(records: Sequence[dict], fields: Sequence[str], source: str, task: str) -> None:
    """Raise ValueError naming the first record that lacks one of `fields`."""
    for i, rec in enumerate(records):
        missing = [f for f in fields if f not in rec]
        if missing:
            raise ValueError(f"{source}: record {i} lacks {missing}, which the {task} task needs")


def index_records(records: Sequence[dict], key: Union[str, Tuple[str, ...]], known: Mapping[Any, Any],
                  pred_source: str, gt_source: str) -> Dict[Any, dict]:
    """{record[key]: record}, checking that each key appears once and names a GT item of the record's own image.

    Args:
        records: prediction records that all have the `key` field(s).
        key: the field naming the GT item (`sent_id`, `region_id`, `image_id`, ...), or a tuple of fields.
        known: {GT item key (a tuple of values for a tuple `key`): its image_id}.
    """
    name = key if isinstance(key, str) else "/".join(key)
    index = {}
    for i, rec in enumerate(records):
        item = rec[key] if isinstance(key, str) else tuple(rec[k] for k in key)
        if item in index:
            raise ValueError(f"{pred_source}: record {i}: a second prediction for {name} {item!r}")
        if item not in known or known[item] != rec["image_id"]:
            raise ValueError(f"{pred_source}: record {i}: {name} {item!r} of image {rec['image_id']!r} is not in "
                             f"{gt_source} for that image")
        index[item] = rec
    return index
