"""COCO captions in the Karpathy & Li split (`dataset_coco.json` of `caption_datasets.zip`): images {"filepath"
(train2014 / val2014), "filename", "cocoid", "split" (train / restval / val / test), "sentences" [{"raw", ...}]}.
The official PixelLLM trains on train + restval (113,287 images) and evaluates on val (5,000). The file gives no
image sizes; they are read from the image headers."""
import os
from typing import List, Optional, Sequence

from ...tasks import get_task
from ..catalog import DatasetCatalog, MetadataCatalog
from ..detection_utils import ImageReadError, image_size
from ..validation import UniqueIds, ValidationReport, caption_problem, check_id, check_text, require_fields
from .common import finish_load, load_json

__all__ = ["KARPATHY_SPLITS", "load_coco_karpathy_json", "register_coco_karpathy"]

KARPATHY_SPLITS = ("train", "restval", "val", "test")


def load_coco_karpathy_json(json_file: str, image_root: str, splits: Sequence[str] = ("train", "restval"),
                            dataset_name: Optional[str] = None, report: Optional[ValidationReport] = None) -> List[dict]:
    """Read the Karpathy split file into dataset dicts with "captions" (docs/DESIGN.md §1).

    Args:
        json_file: `dataset_coco.json`.
        image_root: the folder holding `train2014/` and `val2014/` (each image is `image_root/filepath/filename`).
        splits: the Karpathy splits to keep (official training: train + restval; evaluation: val).
        dataset_name, report: as the other loaders.
    Returns:
        One dict per image with at least one usable caption; "image_id" is the COCO id (`cocoid`).
    """
    unknown = sorted(set(splits) - set(KARPATHY_SPLITS))
    if unknown:
        raise ValueError(f"unknown Karpathy split(s) {unknown}; splits: {KARPATHY_SPLITS}")
    report = report if report is not None else ValidationReport(dataset_name or json_file)
    data = load_json(json_file, ("images",))
    ids = UniqueIds(json_file, "cocoid")
    dicts = []
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        err, kind = require_fields(img, ("filepath", "filename", "split", "sentences", "cocoid")), "missing field"
        if err is None and img["split"] not in splits:
            continue
        if err is None:
            err, kind = check_id(img["cocoid"], "cocoid"), "bad id"
        if err is None and not all(isinstance(img[k], str) and img[k] for k in ("filepath", "filename")):
            err, kind = "filepath / filename must be non-empty strings", "bad image entry"
        if err is not None:
            report.add(json_file, where, kind, err)
            continue
        where += f" (cocoid {img['cocoid']})"
        if not ids.add(img["cocoid"], where, report):
            continue
        captions = []
        for j, sentence in enumerate(img["sentences"] if isinstance(img["sentences"], list) else []):
            text, err = check_text(sentence.get("raw") if isinstance(sentence, dict) else None)
            if err is not None:
                report.add(json_file, f"{where} sentences[{j}]", caption_problem(err), err)
                continue
            captions.append(text)
        if not captions:
            report.add(json_file, where, "no caption", "no usable caption")
            continue
        file_name = os.path.join(image_root, img["filepath"], img["filename"])
        try:
            w, h = image_size(file_name)
        except ImageReadError as e:
            report.add(file_name, where, "unreadable image", e.reason)
            continue
        dicts.append({"file_name": file_name, "image_id": img["cocoid"], "height": h, "width": w, "captions": captions})
    finish_load(report, dataset_name, len(dicts))
    return dicts


def register_coco_karpathy(name: str, json_file: str, image_root: str, splits: Sequence[str], task: str = "caption") -> None:
    """Register Karpathy `splits` of `json_file` as dataset `name` (task "caption", evaluator "caption")."""
    splits = tuple(splits)
    DatasetCatalog.register(name, lambda: load_coco_karpathy_json(json_file, image_root, splits, name))
    MetadataCatalog.get(name).set(task=task, evaluator_type=get_task(task).evaluator, format="coco_karpathy",
                                  json_file=json_file, image_root=image_root, splits=splits)
