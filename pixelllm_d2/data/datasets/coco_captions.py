"""COCO captions json (`captions_train2017.json` layout): images {id, file_name, width, height}, annotations
{id, image_id, caption}."""
from typing import List, Optional

from ..catalog import DatasetCatalog, MetadataCatalog
from ..validation import ValidationReport, caption_problem, check_id, check_text, require_fields
from ...tasks import get_task
from .common import finish_load, load_coco_style

__all__ = ["load_coco_captions_json", "register_coco_captions"]


def load_coco_captions_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None, report: Optional[ValidationReport] = None
) -> List[dict]:
    """Read a COCO captions json into dataset dicts with a "captions" list (docs/DESIGN.md §1).

    Args:
        json_file: the json file.
        image_root: folder the images' `file_name`s are relative to.
        dataset_name: name the load report is kept under (see `validation.last_load_report`).
        report: collects skipped records; a fresh one when None.

    Returns:
        One dict per image that has at least one usable caption, in the json's image order.
    """
    report = report if report is not None else ValidationReport(dataset_name or json_file)
    data, images = load_coco_style(json_file, image_root, report)
    captions = {k: [] for k in images}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        err, kind = require_fields(ann, ("image_id", "caption")), "missing field"
        if err is None:
            err, kind = check_id(ann["image_id"], "image_id"), "bad id"
        if err is None:
            where += f" (id {ann.get('id')}, image {ann['image_id']})"
            text, err = check_text(ann["caption"])
            kind = caption_problem(err)
        if err is None and ann["image_id"] not in images:
            err, kind = "image_id not among the json's images", "unknown image"
        if err is not None:
            report.add(json_file, where, kind, err)
            continue
        captions[ann["image_id"]].append(text)
    dicts = [dict(d, captions=captions[k]) for k, d in images.items() if captions[k]]
    finish_load(report, dataset_name, len(images))
    return dicts


def register_coco_captions(name: str, json_file: str, image_root: str, task: str = "caption") -> None:
    """Register a COCO captions json as dataset `name` (task "caption", evaluator "caption")."""
    DatasetCatalog.register(name, lambda: load_coco_captions_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        task=task, evaluator_type=get_task(task).evaluator, format="coco_captions", json_file=json_file,
        image_root=image_root,
    )
