"""Pieces shared by the loaders of COCO-like json files (COCO captions, GRiT's VG json, RefCOCO instances, MDETR)."""
import json
import logging
import os
from typing import Dict, Optional, Sequence, Tuple

from ..validation import (
    DatasetFileError,
    UniqueIds,
    ValidationReport,
    check_id,
    check_image_size,
    raise_on_duplicates,
    remember_load_report,
    require_fields,
)

logger = logging.getLogger(__name__)


def load_json(json_file: str, required_keys: Sequence[str] = ()) -> dict:
    """Parse a json file whose top level is an object with lists under `required_keys`.

    Raises:
        DatasetFileError: missing file, invalid json, or a required key absent / not a list.
    """
    if not os.path.isfile(json_file):
        raise DatasetFileError(f"{json_file}: file does not exist")
    try:
        with open(json_file, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DatasetFileError(f"{json_file}: not UTF-8 text: {e}") from None
    except RecursionError:
        raise DatasetFileError(f"{json_file}: not usable json: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer literal too long to convert
        raise DatasetFileError(f"{json_file}: not valid json: {e}") from None
    if required_keys and not isinstance(data, dict):
        raise DatasetFileError(f"{json_file}: expected a json object with keys {list(required_keys)}")
    for k in required_keys:
        if not isinstance(data.get(k), list):
            raise DatasetFileError(f"{json_file}: expected a list under {k!r}, got {type(data.get(k)).__name__}")
    return data


def index_images(images: list, json_file: str, image_root: str, report: ValidationReport) -> Dict[object, dict]:
    """COCO-style `images` entries -> {image id: dataset dict with the common keys (no annotations yet)}.
    Entries without id / file_name / width / height or with a bad one are reported and skipped; a repeated id
    is a "duplicate id" problem (fatal at `finish_load`: the second image's annotations would join the first)."""
    out: Dict[object, dict] = {}
    ids = UniqueIds(json_file, "image id")
    for i, img in enumerate(images):
        where = f"images[{i}]"
        err = check_id(img.get("id"), "id") if isinstance(img, dict) else None
        if err is None and isinstance(img, dict):
            where += f" (id {img['id']})"
        err = require_fields(img, ("id", "file_name", "width", "height")) or err
        if err is None:
            err = check_image_size(img["width"], img["height"])
        if err is None and (not isinstance(img["file_name"], str) or not img["file_name"]):
            err = f"file_name must be a non-empty string, got {img['file_name']!r}"[:120]
        if err is not None:
            report.add(json_file, where, "bad image entry", err)
            continue
        if not ids.add(img["id"], where, report):
            continue
        out[img["id"]] = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "image_id": img["id"],
            "height": img["height"],
            "width": img["width"],
        }
    return out


def load_coco_style(json_file: str, image_root: str, report: ValidationReport) -> Tuple[dict, Dict[object, dict]]:
    """Parse a COCO-style json (lists "images" and "annotations") and index its images (`index_images`)."""
    data = load_json(json_file, ("images", "annotations"))
    return data, index_images(data["images"], json_file, image_root, report)


def finish_load(report: ValidationReport, dataset_name: Optional[str], num_records: int) -> None:
    """Record the number of images read, log the report, and keep it for `get_detection_dataset_dicts`.

    Raises:
        DuplicateIdError: some records repeat an id (they are never skipped silently).
    """
    report.num_records = num_records
    report.log(logger)
    remember_load_report(dataset_name, report)
    raise_on_duplicates(report)
