"""Ground-truth files: what `tools/evaluate.py --gt` reads, what the evaluators write as `groundtruth.json`, how
both are checked, and how they are built from dataset dicts (docs/DESIGN.md §1).

Every file is a json object `{"images": [...], "annotations": [...]}` (COCO's layout). Images carry `id` and, except
for `caption`, the original `height` and `width`. Boxes are `[x, y, w, h]` in original-image pixels; a top-level
`"bbox_mode"` may say so (`"XYWH_ABS"`, the only mode accepted for ground truth).

- densecap, loca on VG: the GRiT / LVIS-style VG json; an annotation is a region: `id`, `image_id`, `bbox`, `caption`.
- refer, loca on RefCOCOg: the refer json; an annotation is an expression: `sent_id`, `ref_id`, `image_id`, `bbox`,
  `sentence`, optional `segmentation` (COCO polygons or RLE, original pixels).
- caption: the COCO captions json; an annotation is a caption: `image_id`, `caption`.
- trace: the trace json (written by `TraceEvaluator`); an annotation is a narrative: `image_id`, `query_index`,
  `token_boxes` (one box per target token, `[0, 0, 0, 0]` where the token has no target).
"""
import math
from collections import OrderedDict
from typing import Any, Iterable, List, Optional, Tuple

import numpy as np

from ..structures.boxes import BoxMode

__all__ = [
    "parse_vg", "parse_refer", "parse_captions", "parse_trace", "is_refer_format",
    "vg_ground_truth", "refer_ground_truth", "captions_ground_truth", "subset_ground_truth", "json_segmentation",
    "check_box",
]

def _images(gt: Any, source: str, need_size: bool) -> "OrderedDict[Any, Tuple[Optional[float], Optional[float]]]":
    if not (isinstance(gt, dict) and isinstance(gt.get("images"), list) and isinstance(gt.get("annotations"), list)):
        raise ValueError(f"{source}: expected a json object with the lists 'images' and 'annotations'")
    if gt.get("bbox_mode", "XYWH_ABS") != "XYWH_ABS":
        raise ValueError(f"{source}: ground truth must use bbox_mode XYWH_ABS, not {gt['bbox_mode']!r}")
    sizes = OrderedDict()
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise ValueError(f"{source}: images[{i}] has no 'id'")
        if img["id"] in sizes:
            raise ValueError(f"{source}: images[{i}]: image id {img['id']!r} appears twice")
        h, w = img.get("height"), img.get("width")
        if need_size and not all(isinstance(v, (int, float)) and v > 0 for v in (h, w)):
            raise ValueError(f"{source}: images[{i}] (id {img['id']!r}) needs positive 'height' and 'width' "
                             "(original pixels)")
        sizes[img["id"]] = (h, w)
    return sizes


def _annotations(gt: dict, source: str, sizes: dict, fields: Iterable[str]):
    for i, ann in enumerate(gt["annotations"]):
        where = f"{source}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{where} is not an object")
        missing = [f for f in fields if f not in ann]
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        if ann["image_id"] not in sizes:
            raise ValueError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        yield where, ann


def check_box(box: Any, where: str) -> np.ndarray:
    """`box` as a float64 [4] array after checking it is 4 finite numbers with w, h >= 0 (XYWH)."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in box
    ):
        raise ValueError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {box!r}")
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"{where}: negative width or height in [x, y, w, h] box {box!r} (is it another format?)")
    return np.asarray(box, dtype=np.float64)


def _caption(ann: dict, key: str, where: str) -> str:
    if not isinstance(ann[key], str):
        raise ValueError(f"{where}: '{key}' must be a string, got {ann[key]!r}")
    return ann[key]


def parse_vg(gt: Any, source: str = "ground truth"):
    """Parse a GRiT / LVIS-style VG json (densecap, VG loca).

    Returns:
        sizes: ordered {image_id: (height, width)};
        regions: {image_id: [{"id", "bbox" (float64 [4], XYWH), "caption"}]} (every image, possibly empty).
    """
    sizes = _images(gt, source, need_size=True)
    regions = {image_id: [] for image_id in sizes}
    for where, ann in _annotations(gt, source, sizes, ("id", "image_id", "bbox", "caption")):
        regions[ann["image_id"]].append(
            {"id": ann["id"], "bbox": check_box(ann["bbox"], where), "caption": _caption(ann, "caption", where)}
        )
    return sizes, regions


def is_refer_format(gt: Any) -> bool:
    """Whether `gt` is a refer json (annotations carry `sent_id`) rather than a VG json."""
    anns = gt.get("annotations") if isinstance(gt, dict) else None
    return bool(anns) and isinstance(anns[0], dict) and "sent_id" in anns[0]


def parse_refer(gt: Any, source: str = "ground truth"):
    """Parse a refer json (one annotation per expression).

    Returns:
        sizes: ordered {image_id: (height, width)};
        sentences: {image_id: [{"sent_id", "ref_id", "bbox" (float64 [4], XYWH), "sentence", "segmentation"}]},
        `segmentation` None when absent.
    """
    sizes = _images(gt, source, need_size=True)
    sentences = {image_id: [] for image_id in sizes}
    seen = set()
    for where, ann in _annotations(gt, source, sizes, ("sent_id", "image_id", "bbox", "sentence")):
        if ann["sent_id"] in seen:
            raise ValueError(f"{where}: sent_id {ann['sent_id']!r} appears twice")
        seen.add(ann["sent_id"])
        sentences[ann["image_id"]].append({
            "sent_id": ann["sent_id"], "ref_id": ann.get("ref_id"), "bbox": check_box(ann["bbox"], where),
            "sentence": _caption(ann, "sentence", where), "segmentation": ann.get("segmentation"),
        })
    return sizes, sentences


def parse_captions(gt: Any, source: str = "ground truth"):
    """Parse a COCO captions json.

    Returns:
        sizes: ordered {image_id: (height, width)} (None where absent);
        captions: {image_id: [str]} (every image, possibly empty).
    """
    sizes = _images(gt, source, need_size=False)
    captions = {image_id: [] for image_id in sizes}
    for where, ann in _annotations(gt, source, sizes, ("image_id", "caption")):
        captions[ann["image_id"]].append(_caption(ann, "caption", where))
    return sizes, captions


def parse_trace(gt: Any, source: str = "ground truth"):
    """Parse a trace json (written by `TraceEvaluator`).

    Returns:
        sizes: ordered {image_id: (height, width)};
        queries: {image_id: {query_index: float64 [T, 4] XYWH token boxes, all zeros where a token has no target}}.
    """
    sizes = _images(gt, source, need_size=True)
    queries = {image_id: {} for image_id in sizes}
    for where, ann in _annotations(gt, source, sizes, ("image_id", "query_index", "token_boxes")):
        try:
            boxes = np.asarray(ann["token_boxes"] or np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4)
        except (TypeError, ValueError):
            boxes = np.full((1, 4), np.nan)
        if not np.isfinite(boxes).all():
            raise ValueError(f"{where}: 'token_boxes' must be a list of [x, y, w, h] boxes of finite numbers")
        if ann["query_index"] in queries[ann["image_id"]]:
            raise ValueError(f"{where}: query_index {ann['query_index']} appears twice for image {ann['image_id']!r}")
        queries[ann["image_id"]][ann["query_index"]] = boxes
    return sizes, queries


def _xywh(ann: dict) -> List[float]:
    mode = ann.get("bbox_mode", BoxMode.XYXY_ABS)
    return [float(v) for v in BoxMode.convert(list(ann["bbox"]), mode, BoxMode.XYWH_ABS)]


def _image_entry(d: dict) -> dict:
    return {"id": d["image_id"], "height": int(d["height"]), "width": int(d["width"])}


def json_segmentation(segm: Any) -> Any:
    """A COCO polygon list or RLE as json can hold it (compressed RLE counts as str, not bytes)."""
    if isinstance(segm, dict) and isinstance(segm.get("counts"), bytes):
        return {"size": list(segm["size"]), "counts": segm["counts"].decode("ascii")}
    if isinstance(segm, (list, tuple)):
        return [[float(v) for v in poly] for poly in segm]
    return segm


def vg_ground_truth(dataset_dicts: List[dict]) -> dict:
    """The GRiT-style VG json of Visual Genome dataset dicts (regions with `bbox`, `bbox_mode`, `caption`, `id`)."""
    annotations = [
        {"id": ann["id"], "image_id": d["image_id"], "bbox": _xywh(ann), "caption": ann["caption"]}
        for d in dataset_dicts for ann in d.get("annotations", [])
    ]
    return {"bbox_mode": "XYWH_ABS", "images": [_image_entry(d) for d in dataset_dicts], "annotations": annotations}


def refer_ground_truth(dataset_dicts: List[dict]) -> dict:
    """The refer json of RefCOCO-style dataset dicts: one annotation per expression of every referred object."""
    annotations = []
    for d in dataset_dicts:
        for ann in d.get("annotations", []):
            segm = json_segmentation(ann["segmentation"]) if ann.get("segmentation") is not None else None
            for sent_id, sentence in zip(ann["sent_ids"], ann["sentences"]):
                entry = {"sent_id": sent_id, "ref_id": ann.get("ref_id"), "image_id": d["image_id"],
                         "bbox": _xywh(ann), "sentence": sentence}
                if segm is not None:
                    entry["segmentation"] = segm
                annotations.append(entry)
    return {"bbox_mode": "XYWH_ABS", "images": [_image_entry(d) for d in dataset_dicts], "annotations": annotations}


def captions_ground_truth(dataset_dicts: List[dict]) -> dict:
    """The COCO captions json of caption dataset dicts (`captions`: list of str)."""
    annotations = []
    for d in dataset_dicts:
        for caption in d.get("captions", []):
            annotations.append({"id": len(annotations), "image_id": d["image_id"], "caption": caption})
    return {"images": [_image_entry(d) for d in dataset_dicts], "annotations": annotations}


def subset_ground_truth(gt: dict, image_ids: Iterable[Any]) -> dict:
    """`gt` restricted to the images `image_ids` (kept in the file's order) and their annotations."""
    keep = set(image_ids)
    out = {k: v for k, v in gt.items() if k not in ("images", "annotations")}
    out["images"] = [img for img in gt["images"] if img["id"] in keep]
    out["annotations"] = [ann for ann in gt["annotations"] if ann["image_id"] in keep]
    return out
