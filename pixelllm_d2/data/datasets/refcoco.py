"""RefCOCO / RefCOCO+ / RefCOCOg, from either of their two common layouts:

- the `refer` toolkit's files: `refs(unc).p` / `refs(umd).p` (a pickle: a list of refs {ref_id, ann_id, image_id,
  split, sentences [{sent_id, sent, raw, tokens}], sent_ids, category_id, file_name}) + `instances.json` (COCO
  detection json with polygon / RLE masks). The pickle is read with a restricted unpickler that admits plain
  containers and scalars only: a data file can never run code.
- MDETR's json (`finetune_refcoco_train.json`, ...): COCO-style, one "image" per expression (with `caption` and
  `original_id` / `original_img_id`) and its annotation(s) (with `original_id`), regrouped here per original image
  and object as the official converter does.

Both give one dataset dict per image with one annotation per referred object (docs/DESIGN.md §1).
"""
import io
import os
import pickle
from collections import defaultdict
from typing import Dict, List, Optional

from ...structures import BoxMode
from ..catalog import DatasetCatalog, MetadataCatalog
from ..validation import (
    DatasetFileError,
    UniqueIds,
    ValidationReport,
    caption_problem,
    check_id,
    check_text,
    check_xywh_box,
    require_fields,
)
from ...tasks import get_task
from .common import finish_load, index_images, load_coco_style, load_json

__all__ = [
    "load_refs_pickle",
    "load_refcoco",
    "load_mdetr_refcoco_json",
    "register_refcoco",
    "register_mdetr_refcoco",
]

# The only globals a refs pickle may name: Python 2 / 3 sets (protocol 2 pickles them by reference).
_ALLOWED_GLOBALS = {(m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset")}


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        # Python 2 `str` objects (the refer toolkit's pickles) are decoded as UTF-8.
        super().__init__(file, encoding="utf-8", errors="replace")
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return set if name == "set" else frozenset
        raise pickle.UnpicklingError(
            f"{self.source}: refusing to load global '{module}.{name}': a refs file may hold only plain containers "
            f"and scalars, and this one would create or call arbitrary objects"
        )


def load_refs_pickle(path: str) -> list:
    """Read a `refs(*).p` file with an unpickler that admits only lists, dicts, tuples, sets, strings and numbers.

    Raises:
        DatasetFileError: missing file, a pickle naming any other global (e.g. one that would execute code), or
            a top level that is not a list.
    """
    if not os.path.isfile(path):
        raise DatasetFileError(f"{path}: file does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        refs = _PlainDataUnpickler(io.BytesIO(raw), path).load()
    except pickle.UnpicklingError as e:
        raise DatasetFileError(str(e) if str(e).startswith(path) else f"{path}: not a valid pickle: {e}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise DatasetFileError(f"{path}: not a valid pickle: {type(e).__name__}: {e}") from None
    if not isinstance(refs, list):
        raise DatasetFileError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def _clean_segmentation(seg, where: str, file: str, report: ValidationReport):
    """Polygons (list of flat coordinate lists, each >= 3 points) or RLE ({"counts", "size"}); None when absent
    or unusable (reported)."""
    if seg is None:
        return None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        return seg
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if polys:
            return polys
    report.add(file, where, "bad segmentation", f"unusable segmentation (no mask for this object): {str(seg)[:80]}")
    return None


def _annotation(box, seg, sentences, sent_ids, ref_id, ann_id, category_id) -> dict:
    out = {
        "bbox": box,
        "bbox_mode": BoxMode.XYXY_ABS,
        "sentences": sentences,
        "sent_ids": sent_ids,
        "ref_id": ref_id,
        "ann_id": ann_id,
        "category_id": category_id,
    }
    if seg is not None:
        out["segmentation"] = seg
    return out


def load_refcoco(
    refs_file: str,
    instances_json: str,
    image_root: str,
    split: Optional[str] = None,
    dataset_name: Optional[str] = None,
    report: Optional[ValidationReport] = None,
) -> List[dict]:
    """Read the refer toolkit's `refs(*).p` + `instances.json`.

    Args:
        refs_file: the refs pickle.
        instances_json: the COCO instances json its `ann_id`s / `image_id`s point into.
        image_root: folder of the instances json's `file_name`s (COCO train2014 for all three datasets).
        split: keep refs of this split ("train", "val", "testA", "testB", "test"); None keeps all.
        dataset_name: name the load report is kept under.
        report: collects skipped records; a fresh one when None.

    Returns:
        One dict per image with at least one usable ref; "annotations" = one per ref: {"bbox" XYXY pixels, "bbox_mode",
        "segmentation" (when usable), "sentences", "sent_ids", "ref_id", "ann_id", "category_id"}.
    """
    report = report if report is not None else ValidationReport(dataset_name or refs_file)
    refs = load_refs_pickle(refs_file)
    inst, images = load_coco_style(instances_json, image_root, report)
    anns = _index_annotations(inst["annotations"], instances_json, report)
    if split is not None:
        splits = {r.get("split") for r in refs if isinstance(r, dict) and isinstance(r.get("split"), str)}
        if split not in splits:
            raise DatasetFileError(
                f"{refs_file}: no refs of split {split!r}; the file has splits {sorted(splits)}"
            )
    per_image: Dict[object, list] = defaultdict(list)
    ref_ids, sent_id_set = UniqueIds(refs_file, "ref_id"), UniqueIds(refs_file, "sent_id")
    for i, ref in enumerate(refs):
        where = f"refs[{i}]"
        if isinstance(ref, dict) and split is not None and ref.get("split") != split:
            continue
        err, kind = require_fields(ref, ("ref_id", "ann_id", "image_id", "sentences")), "missing field"
        if err is None:
            err = check_id(ref["ref_id"], "ref_id") or check_id(ref["ann_id"], "ann_id")
            err, kind = err or check_id(ref["image_id"], "image_id"), "bad id"
        if err is None:
            where += f" (ref_id {ref['ref_id']})"
            if not ref_ids.add(ref["ref_id"], where, report):
                continue
            if ref["image_id"] not in images:
                err, kind = f"image_id {ref['image_id']} not among {instances_json}'s images", "unknown image"
            elif ref["ann_id"] not in anns:
                err, kind = f"ann_id {ref['ann_id']} not among {instances_json}'s annotations", "unknown annotation"
        if err is None:
            img, ann = images[ref["image_id"]], anns[ref["ann_id"]]
            box, err = check_xywh_box(ann.get("bbox"), img["width"], img["height"])
            kind = "bad box"
        if err is not None:
            report.add(refs_file, where, kind, err)
            continue
        sentences, sent_ids = [], []
        for j, s in enumerate(ref["sentences"] if isinstance(ref["sentences"], list) else []):
            text, serr = check_text(s.get("sent", s.get("raw")) if isinstance(s, dict) else None)
            kind = caption_problem(serr) if serr else "bad id"
            # without a sent_id, the (unique) ref id and position stand in: evaluation matches expressions by it
            sid = s.get("sent_id", f"{ref['ref_id']}_{j}") if serr is None else None
            serr = serr or check_id(sid, "sent_id")
            if serr is not None:
                report.add(refs_file, f"{where} sentences[{j}]", kind, serr)
                continue
            if not sent_id_set.add(sid, f"{where} sentences[{j}]", report):
                continue
            sentences.append(text)
            sent_ids.append(sid)
        if not sentences:
            report.add(refs_file, where, "no sentences", "no usable referring expression")
            continue
        seg = _clean_segmentation(ann.get("segmentation"), f"annotation {ref['ann_id']}", instances_json, report)
        per_image[ref["image_id"]].append(
            _annotation(box, seg, sentences, sent_ids, ref["ref_id"], ref["ann_id"],
                        ref.get("category_id", ann.get("category_id")))
        )
    dicts = [dict(images[k], annotations=v) for k, v in per_image.items()]
    finish_load(report, dataset_name, len(dicts))
    return dicts


def _index_annotations(annotations: list, json_file: str, report: ValidationReport) -> Dict[object, dict]:
    """COCO instances annotations by id; entries without a usable id are skipped, a repeated id is fatal."""
    out, ids = {}, UniqueIds(json_file, "annotation id")
    for i, a in enumerate(annotations):
        err = require_fields(a, ("id",))
        err = err or check_id(a["id"], "id")
        if err is not None:
            report.add(json_file, f"annotations[{i}]", "bad annotation", err)
        elif ids.add(a["id"], f"annotations[{i}] (id {a['id']})", report):
            out[a["id"]] = a
    return out


def load_mdetr_refcoco_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None, report: Optional[ValidationReport] = None
) -> List[dict]:
    """Read an MDETR referring json (one split per file), regrouping its per-expression images by original
    image and its annotations by original object, as the official `build_mdetr_ref_tfrecord.py` does.

    Returns:
        Dataset dicts as `load_refcoco`; `ref_id` is the original annotation id (MDETR keeps no ref ids) and
        `sent_ids` the per-expression image ids.
    """
    report = report if report is not None else ValidationReport(dataset_name or json_file)
    data = load_json(json_file, ("images", "annotations"))
    anns_of = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        err, kind = require_fields(ann, ("image_id", "bbox")), "missing field"
        if err is None:
            err, kind = check_id(ann["image_id"], "image_id") or check_id(ann.get("original_id", ann.get("id", 0)), "original_id / id"), "bad id"
        if err is not None:
            report.add(json_file, f"annotations[{i}]", kind, err)
            continue
        anns_of[ann["image_id"]].append((i, ann))
    image_ids, sent_ids = UniqueIds(json_file, "image id"), UniqueIds(json_file, "expression id")
    per_image: Dict[int, dict] = {}
    objects: Dict[int, Dict[int, dict]] = defaultdict(dict)
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        err, kind = require_fields(img, ("id", "file_name", "width", "height", "caption")), "missing field"
        orig_id = img.get("original_img_id", img.get("original_id")) if isinstance(img, dict) else None
        if err is None and orig_id is None:
            err = "missing field 'original_img_id' / 'original_id'"
        if err is None:
            sid = img.get("refexp_id", img.get("sent_id", img["id"]))
            err = check_id(img["id"], "id") or check_id(orig_id, "original_img_id") or check_id(sid, "refexp_id / sent_id")
            kind = "bad id"
        if err is None:
            where += f" (id {img['id']})"
            if not (image_ids.add(img["id"], where, report) and sent_ids.add(sid, where, report)):
                continue
            text, err = check_text(img["caption"])
            kind = caption_problem(err)
        if err is None and not anns_of.get(img["id"]):
            err, kind = "expression without annotation", "no annotation"
        if err is not None:
            report.add(json_file, where, kind, err)
            continue
        if orig_id not in per_image:
            sub = ValidationReport()
            entry = index_images([dict(img, id=orig_id)], json_file, image_root, sub)
            if sub.problems:
                report.add(json_file, where, "bad image entry", sub.problems[0].message)
                continue
            per_image[orig_id] = entry[orig_id]
        base = per_image[orig_id]
        for j, ann in anns_of[img["id"]]:
            box, berr = check_xywh_box(ann["bbox"], base["width"], base["height"])
            if berr is not None:
                report.add(json_file, f"annotations[{j}]", "bad box", berr)
                continue
            obj_id = ann.get("original_id", ann.get("id"))
            if obj_id not in objects[orig_id]:
                seg = _clean_segmentation(ann.get("segmentation"), f"annotations[{j}]", json_file, report)
                objects[orig_id][obj_id] = _annotation(box, seg, [], [], obj_id, obj_id, ann.get("category_id"))
            obj = objects[orig_id][obj_id]
            obj["sentences"].append(text)
            obj["sent_ids"].append(sid)
    dicts = [
        dict(d, annotations=[objects[k][o] for o in sorted(objects[k], key=str)])
        for k, d in per_image.items()
        if objects[k]
    ]
    finish_load(report, dataset_name, len(dicts))
    return dicts


def register_refcoco(
    name: str, refs_file: str, instances_json: str, image_root: str, split: Optional[str], task: str = "refer"
) -> None:
    """Register one split of a refer-toolkit dataset as `name`. `task` "refer" (expression -> box / mask) or
    "region" (caption each referred box: location-conditioned captioning, evaluator "loca")."""
    DatasetCatalog.register(name, lambda: load_refcoco(refs_file, instances_json, image_root, split, name))
    MetadataCatalog.get(name).set(
        task=task, evaluator_type=get_task(task).evaluator, format="refcoco", refs_file=refs_file,
        instances_json=instances_json, image_root=image_root, split=split,
    )


def register_mdetr_refcoco(name: str, json_file: str, image_root: str, task: str = "refer") -> None:
    """Register an MDETR referring json as `name` (task as in `register_refcoco`)."""
    DatasetCatalog.register(name, lambda: load_mdetr_refcoco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        task=task, evaluator_type=get_task(task).evaluator, format="mdetr_refcoco", json_file=json_file,
        image_root=image_root,
    )
