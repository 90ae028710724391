"""`validate_source`: run a format's loader on a file with a fresh report, then check its images (what
tools/validate_dataset.py prints). Kept apart from `validation.py`, which the loaders import, so that the loaders
and their checks form no import cycle."""
import os
from typing import Optional

from . import datasets as D
from .datasets.coco_karpathy import KARPATHY_SPLITS
from .validation import DatasetFileError, DuplicateIdError, ValidationReport, check_image_file

__all__ = ["FORMATS", "validate_source"]

FORMATS = ("ln", "refcoco", "vg", "coco_captions", "coco_karpathy")


def validate_source(
    fmt: str,
    file: str,
    image_root: Optional[str] = None,
    check_images: bool = True,
    instances_json: Optional[str] = None,
    split: Optional[str] = None,
    image_file_format: Optional[str] = None,
    image_info_json: Optional[str] = None,
) -> ValidationReport:
    """Run the loader of `fmt` on `file` with a fresh report, then (with `check_images`) check that every image
    exists, decodes completely and has the size the annotations say. A file-level error becomes a problem too.

    Args:
        fmt: "ln", "refcoco" (a refs pickle, or an MDETR json when `file` ends in .json), "vg", "coco_captions".
        file: the annotation file (LN: a jsonl file).
        image_root: image folder; default: the file's folder.
        check_images: decode every image.
        instances_json: refcoco: the instances json (default: `instances.json` next to the refs file).
        split: refcoco / coco_karpathy: only this split.
        image_file_format, image_info_json: LN: as in `load_ln_jsonl`.

    Returns:
        The report; empty when everything is usable.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    report = ValidationReport(file)
    image_root = image_root if image_root is not None else os.path.dirname(os.path.abspath(file))
    try:
        if fmt == "ln":
            kw = {"image_file_format": image_file_format} if image_file_format else {}
            dicts = D.load_ln_jsonl(file, image_root, image_info_json=image_info_json, report=report, **kw)
        elif fmt == "refcoco" and file.endswith(".json"):
            dicts = D.load_mdetr_refcoco_json(file, image_root, report=report)
        elif fmt == "refcoco":
            instances = instances_json or os.path.join(os.path.dirname(file), "instances.json")
            dicts = D.load_refcoco(file, instances, image_root, split=split, report=report)
        elif fmt == "vg":
            dicts = D.load_vg_json(file, image_root, report=report)
        elif fmt == "coco_karpathy":
            dicts = D.load_coco_karpathy_json(file, image_root, splits=[split] if split else KARPATHY_SPLITS, report=report)
        else:
            dicts = D.load_coco_captions_json(file, image_root, report=report)
    except DuplicateIdError:
        return report  # the repeats are in the report already
    except DatasetFileError as e:
        report.add(file, "file", "bad file", str(e))
        return report
    if check_images:
        seen = set()
        for d in dicts:
            if d["file_name"] in seen:
                continue
            seen.add(d["file_name"])
            err = check_image_file(d["file_name"], d["width"], d["height"])
            if err is not None:
                report.add(d["file_name"], f"image {d['image_id']}", "bad image", err)
    return report
