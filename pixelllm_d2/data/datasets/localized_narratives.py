"""Localized Narratives jsonl (one narrative per line: dataset_id, image_id, annotator_id, caption,
timed_caption [{utterance, start_time, end_time}], traces [[{x, y, t}]], voice_recording).

The loader runs the official offline step (`trace_alignment.summarize_traces`) so dataset dicts carry per-utterance
boxes / centres / 16 samples, normalised to [0, 1] and clipped; the token alignment happens in the mapper.
"""
import json
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..catalog import DatasetCatalog, MetadataCatalog
from ..detection_utils import ImageReadError, image_size
from ..trace_alignment import summarize_traces
from ..validation import DatasetFileError, ValidationReport, caption_problem, check_id, check_text, require_fields
from ...tasks import get_task
from .common import finish_load, index_images, load_json

__all__ = ["load_ln_jsonl", "register_ln_jsonl", "COCO_IMAGE_FILE_FORMAT"]

# LN-COCO's image_id is COCO's id; COCO 2017 images are named by the zero-padded id.
COCO_IMAGE_FILE_FORMAT = "{image_id:012d}.jpg"


def _trace_points(traces) -> np.ndarray:
    """[[{x, y, t}]] -> float [P, 3]; raises ValueError naming what is wrong."""
    if not isinstance(traces, list) or not all(isinstance(seg, list) for seg in traces):
        raise ValueError("traces must be a list of lists of {x, y, t}")
    try:
        pts = np.array([[p["x"], p["y"], p["t"]] for seg in traces for p in seg], dtype=np.float64).reshape(-1, 3)
    except (TypeError, KeyError, ValueError):
        pts = None
    if pts is None or not np.isfinite(pts).all():
        for si, seg in enumerate(traces):  # slow path: find the offending point
            for pi, p in enumerate(seg):
                vals = [p.get(k) for k in "xyt"] if isinstance(p, dict) else None
                if vals is None or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
                    raise ValueError(f"traces[{si}][{pi}] is not a finite {{x, y, t}} point: {p!r}")
    return pts


def _timed_caption(timed) -> List[dict]:
    if not isinstance(timed, list) or not timed:
        raise ValueError("timed_caption must be a non-empty list")
    for ui, u in enumerate(timed):
        err = require_fields(u, ("utterance", "start_time", "end_time"))
        if err is not None:
            raise ValueError(f"timed_caption[{ui}]: {err}")
        s, e = u["start_time"], u["end_time"]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (s, e)) or e < s:
            raise ValueError(f"timed_caption[{ui}]: bad times start {s!r} end {e!r}")
        if not isinstance(u["utterance"], str):
            raise ValueError(f"timed_caption[{ui}]: utterance is not a string")
    return timed


def _image_file(image_root: str, fmt: str, image_id) -> str:
    """The image path of `image_id` (already normalised: digits are an int); ValueError when the id does not fit
    the pattern (e.g. a name under "{image_id:012d}")."""
    try:
        return os.path.join(image_root, fmt.format(image_id=image_id))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(f"image_id {image_id!r} does not fit the file name pattern {fmt!r} ({e})") from None


def _finite_utterances(utterances: List[dict]) -> bool:
    return all(np.isfinite(u["box"]).all() and np.isfinite(u["center"]).all() for u in utterances)


def _read_lines(path: str, report: ValidationReport):
    """(line number, parsed record) of every non-blank line that is UTF-8 json; the others are reported."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"line {line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.add(path, where, "bad json", f"not UTF-8 text: {e}")
                continue
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except RecursionError:
                report.add(path, where, "bad json", "nested too deeply")
            except ValueError as e:  # JSONDecodeError, or an integer literal too long to convert
                report.add(path, where, "bad json", str(e))


def load_ln_jsonl(
    jsonl_files: Union[str, Sequence[str]],
    image_root: str,
    image_file_format: str = COCO_IMAGE_FILE_FORMAT,
    image_info_json: Optional[str] = None,
    dataset_name: Optional[str] = None,
    report: Optional[ValidationReport] = None,
) -> List[dict]:
    """Read Localized Narratives jsonl file(s) into one dataset dict per image.

    Args:
        jsonl_files: one file or the shards of one split.
        image_root: image folder.
        image_file_format: `str.format` pattern of an image's file name from `image_id` (digits become an int):
            COCO's "{image_id:012d}.jpg" by default.
        image_info_json: a COCO-style json whose "images" give width / height (e.g. COCO's captions json);
            when None, sizes are read from the image headers.
        dataset_name: name the load report is kept under.
        report: collects skipped records; a fresh one when None.

    Returns:
        Dicts with "narratives": [{"caption", "annotator_id", "utterances": [{"utterance", "start_time",
        "end_time", "box", "center", "points"}]}] (docs/DESIGN.md §1). Narratives with at most one trace point,
        an empty caption or malformed fields are skipped (reported); images left with none are dropped.
    """
    files = [jsonl_files] if isinstance(jsonl_files, str) else list(jsonl_files)
    report = report if report is not None else ValidationReport(dataset_name or ", ".join(files))
    sizes: Dict[object, dict] = {}
    if image_info_json is not None:
        info = load_json(image_info_json, ("images",))
        sizes = index_images(info["images"], image_info_json, image_root, report)
    per_image: "OrderedDict[object, list]" = OrderedDict()
    for path in files:
        if not os.path.isfile(path):
            raise DatasetFileError(f"{path}: file does not exist")
        for line_no, rec in _read_lines(path, report):
            where = f"line {line_no}"
            err = require_fields(rec, ("image_id", "caption", "timed_caption", "traces"))
            if err is not None:
                report.add(path, where, "missing field", err)
                continue
            err = check_id(rec["image_id"], "image_id")
            if err is not None:
                report.add(path, where, "bad id", err)
                continue
            image_id = rec["image_id"]
            image_id = int(image_id) if isinstance(image_id, str) and image_id.isdigit() else image_id
            where += f" (image {image_id}, annotator {str(rec.get('annotator_id'))[:40]})"
            caption, err = check_text(rec["caption"])
            if err is not None:
                report.add(path, where, caption_problem(err), err)
                continue
            try:
                _image_file(image_root, image_file_format, image_id)
                points = _trace_points(rec["traces"])
                timed = _timed_caption(rec["timed_caption"])
            except ValueError as e:
                report.add(path, where, "bad id" if "file name pattern" in str(e) else "bad trace", str(e))
                continue
            if len(points) <= 1:  # official: such narratives are skipped
                report.add(path, where, "short trace", f"trace has {len(points)} point(s), needs at least 2")
                continue
            with np.errstate(all="ignore"):  # huge times / coordinates overflow; caught just below
                utterances = summarize_traces(points, timed)
            if not _finite_utterances(utterances):
                report.add(path, where, "bad trace", "times or coordinates too large: the utterance boxes are not finite")
                continue
            per_image.setdefault(image_id, []).append(
                {"caption": caption, "annotator_id": str(rec.get("annotator_id", "")), "utterances": utterances}
            )
    dicts = []
    for image_id, narratives in per_image.items():
        file_name = _image_file(image_root, image_file_format, image_id)
        if image_id in sizes:
            w, h = sizes[image_id]["width"], sizes[image_id]["height"]
        else:
            try:
                w, h = image_size(file_name)
            except ImageReadError as e:
                report.add(file_name, f"image {image_id}", "unreadable image", e.reason)
                continue
        dicts.append(
            {"file_name": file_name, "image_id": image_id, "height": h, "width": w, "narratives": narratives}
        )
    finish_load(report, dataset_name, len(per_image))
    return dicts


def register_ln_jsonl(
    name: str,
    jsonl_files: Union[str, Sequence[str]],
    image_root: str,
    image_file_format: str = COCO_IMAGE_FILE_FORMAT,
    image_info_json: Optional[str] = None,
    task: str = "trace",
) -> None:
    """Register Localized Narratives jsonl file(s) as dataset `name` (task "trace", evaluator "trace")."""
    files = [jsonl_files] if isinstance(jsonl_files, str) else list(jsonl_files)
    DatasetCatalog.register(
        name, lambda: load_ln_jsonl(files, image_root, image_file_format, image_info_json, name)
    )
    MetadataCatalog.get(name).set(
        task=task, evaluator_type=get_task(task).evaluator, format="ln", jsonl_files=files, image_root=image_root,
        image_file_format=image_file_format, image_info_json=image_info_json,
    )
