"""Model outputs (docs/DESIGN.md §3) as JSON: plain lists in original-image pixels, masks as COCO RLE, written
atomically."""
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..structures.masks import mask_to_rle
from .file_io import atomic_write

__all__ = ["mask_to_rle", "output_to_json", "atomic_write_bytes", "write_json"]


def _clip_boxes(boxes, width: int, height: int) -> np.ndarray:
    # (N, 4) -> ordered, clipped to the image, rounded to 1/100 pixel.
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], axis=1)
    b = np.clip(b, 0, [width, height, width, height])
    return np.round(b, 2)


def _clip_points(points, width: int, height: int) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.round(np.clip(p, 0, [width, height]), 2)


def _as_numpy(x):
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def output_to_json(
    output: Dict,
    image: str,
    height: int,
    width: int,
    texts: Optional[Sequence[str]] = None,
    points: Optional[Sequence] = None,
) -> Dict:
    """One image's model output as a JSON-ready dict; every coordinate in original pixels, clipped to the image.

    Args:
        output: the model's output dict for the image (docs/DESIGN.md §3).
        image: the image's path (or name). height, width: original image size.
        texts: "refer": the expressions as given, reported as each result's "caption" (the model's own caption
            field is the tokenised text, which drops words outside the vocabulary).
        points: "region" with point prompts: the (P, 2) prompt points, reported instead of a box (the model's
            box for a point query is the whole image).
    Returns:
        {"image", "width", "height", "task", "results": [{"box": [x0, y0, x1, y1] (absent for point prompts),
        "points" (point prompts), "score", "caption", "words": [{"word", "point": [x, y], "box": [x0, y0, x1, y1]}],
        "mask_rle", "mask_score" (refer with masks)}]}.
    """
    task = output["task"]
    boxes = _clip_boxes(_as_numpy(output["pred_boxes"]), width, height)
    scores = _as_numpy(output["scores"]).astype(np.float64).reshape(-1)
    results: List[Dict] = []
    for k in range(len(boxes)):
        r: Dict = {}
        if points is not None:
            r["points"] = _clip_points(points, width, height).tolist()
        else:
            r["box"] = boxes[k].tolist()
        r["score"] = round(float(scores[k]), 6)
        r["caption"] = texts[k] if texts is not None else output["captions"][k]
        wpts = _clip_points(_as_numpy(output["word_points"][k]), width, height)
        wboxes = _clip_boxes(_as_numpy(output["word_boxes"][k]), width, height)
        r["words"] = [
            {"word": w, "point": wpts[j].tolist(), "box": wboxes[j].tolist()} for j, w in enumerate(output["words"][k])
        ]
        if "pred_masks" in output:
            r["mask_rle"] = mask_to_rle(output["pred_masks"][k])
            r["mask_score"] = round(float(output["mask_scores"][k]), 6)
        results.append(r)
    return {"image": image, "width": int(width), "height": int(height), "task": task, "results": results}


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically (`file_io.atomic_write`), creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path: str, obj) -> None:
    """`obj` as indented JSON at `path`, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))
