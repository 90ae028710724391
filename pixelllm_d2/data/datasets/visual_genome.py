"""Visual Genome dense captioning in GRiT's LVIS-style json (`train.json` / `test.json`): images {id, file_name,
width, height}, annotations {id, image_id, bbox [x, y, w, h] pixels, caption}. `datasets/prepare_vg.py` writes it
from VG's native `region_descriptions.json` + `image_data.json`."""
from typing import List, Optional

from ...structures import BoxMode
from ..catalog import DatasetCatalog, MetadataCatalog
from ..validation import UniqueIds, ValidationReport, caption_problem, check_id, check_text, check_xywh_box, require_fields
from ...tasks import get_task
from .common import finish_load, load_coco_style

__all__ = ["load_vg_json", "register_vg_json"]


def load_vg_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None, report: Optional[ValidationReport] = None
) -> List[dict]:
    """Read a GRiT-style VG json into dataset dicts whose "annotations" hold one region each: {"bbox" XYXY pixels
    (clipped to the image), "bbox_mode", "caption", "id"} (docs/DESIGN.md §1).

    Args:
        json_file: the json file.
        image_root: folder the images' `file_name`s are relative to.
        dataset_name: name the load report is kept under.
        report: collects skipped records; a fresh one when None.

    Returns:
        One dict per image of the json (images whose regions were all skipped keep an empty list).
    """
    report = report if report is not None else ValidationReport(dataset_name or json_file)
    data, images = load_coco_style(json_file, image_root, report)
    regions = {k: [] for k in images}
    region_ids = UniqueIds(json_file, "region id")
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        err, kind = require_fields(ann, ("id", "image_id", "bbox", "caption")), "missing field"
        if err is None:
            err = check_id(ann["id"], "id") or check_id(ann["image_id"], "image_id")
            kind = "bad id"
        if err is None:
            where += f" (id {ann['id']}, image {ann['image_id']})"
            if not region_ids.add(ann["id"], where, report):
                continue
            if ann["image_id"] not in images:
                err, kind = "image_id not among the json's images", "unknown image"
        if err is None:
            img = images[ann["image_id"]]
            box, err = check_xywh_box(ann["bbox"], img["width"], img["height"])
            kind = "bad box"
        if err is None:
            text, err = check_text(ann["caption"])
            kind = caption_problem(err)
        if err is not None:
            report.add(json_file, where, kind, err)
            continue
        regions[ann["image_id"]].append(
            {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "caption": text, "id": ann["id"]}
        )
    dicts = [dict(d, annotations=regions[k]) for k, d in images.items()]
    finish_load(report, dataset_name, len(images))
    return dicts


def register_vg_json(name: str, json_file: str, image_root: str, task: str = "densecap") -> None:
    """Register a GRiT-style VG json as dataset `name`. `task` "densecap" (detect and caption) or "region"
    (caption each GT box: location-conditioned captioning, evaluator "loca")."""
    DatasetCatalog.register(name, lambda: load_vg_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        task=task, evaluator_type=get_task(task).evaluator, format="vg", json_file=json_file, image_root=image_root
    )
