"""The embedded "shapes" grounding benchmark, written in the real formats and read by the real loaders.

Layout under `<root>/shapes/` (generated on first use of any `shapes_*` dataset):
    images/{train,val}/<image_id:07d>.png
    ln/shapes_{train,val}_localized_narratives.jsonl     Localized Narratives (timed utterances + mouse traces)
    refcoco/refs(unc).p + refcoco/instances.json         refer toolkit layout (splits "train" / "val"; polygon masks)
    vg/train.json, vg/test.json                           GRiT-style VG json (the val scenes are "test")
    captions/captions_{train,val}.json                    COCO captions json
    meta.json                                             version and sizes (written last)

Every task reads the same scenes. Scene i of a split is a pure function of (split, i): a NumPy generator seeded with
(benchmark seed, split, i) draws it, so any size prefix is the same scenes. Image ids are i + 1 (train) and
1_000_001 + i (val). Sizes default to 2000 train / 100 val images, overridable by `PIXELLLM_SHAPES_NUM_TRAIN` /
`PIXELLLM_SHAPES_NUM_VAL` or the arguments of `register_all_shapes` / `generate_shapes`.
"""
import contextlib
import glob
import json
import logging
import os
import pickle
import shutil
import tempfile
from typing import Dict, List, Optional

import cv2
import numpy as np

from .shapes_scenes import ShapeObject, render_scene, sample_scene
from .shapes_text import image_captions, narrative_utterances, referring_expressions, region_caption

__all__ = ["SPLITS", "generate_shapes", "ensure_shapes", "shapes_files", "shapes_sizes"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the generated content changes; stale folders are regenerated
DEFAULT_SIZES = {"train": 2000, "val": 100}
SPLITS = ("train", "val")
_SEED = 20231215
_ID_OFFSET = {"train": 1, "val": 1_000_001}
CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
_CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}

# Localized-Narratives timing (seconds): per spoken word, between utterances, and how far each utterance's trace
# starts before / ends after it.
_WORD_SECONDS = (0.28, 0.42)
_PAUSE_SECONDS = (0.25, 0.6)
_TRACE_MARGIN_SECONDS = 0.06
_TRACE_STEP_SECONDS = 0.04
_ZIGZAG_SWEEPS = 3


def shapes_sizes(num_train: Optional[int] = None, num_val: Optional[int] = None) -> Dict[str, int]:
    """Images per split: the arguments, else `PIXELLLM_SHAPES_NUM_TRAIN` / `_NUM_VAL`, else 2000 / 100."""
    out = {}
    for split, arg in (("train", num_train), ("val", num_val)):
        env = os.environ.get(f"PIXELLLM_SHAPES_NUM_{split.upper()}")
        value = arg if arg is not None else int(env) if env else DEFAULT_SIZES[split]
        if value < 1:
            raise ValueError(f"shapes {split} size must be >= 1, got {value}")
        out[split] = int(value)
    return out


def shapes_files(folder: str) -> Dict[str, str]:
    """Paths of the generated files inside `folder` (`<root>/shapes`)."""
    return {
        "image_root": os.path.join(folder, "images"),
        "ln_train": os.path.join(folder, "ln", "shapes_train_localized_narratives.jsonl"),
        "ln_val": os.path.join(folder, "ln", "shapes_val_localized_narratives.jsonl"),
        "refs": os.path.join(folder, "refcoco", "refs(unc).p"),
        "instances": os.path.join(folder, "refcoco", "instances.json"),
        "vg_train": os.path.join(folder, "vg", "train.json"),
        "vg_val": os.path.join(folder, "vg", "test.json"),
        "captions_train": os.path.join(folder, "captions", "captions_train.json"),
        "captions_val": os.path.join(folder, "captions", "captions_val.json"),
        "meta": os.path.join(folder, "meta.json"),
    }


def _trace(rng: np.random.Generator, obj: ShapeObject, start: float, end: float, width: int, height: int):
    """A zig-zag over the object's box (sweeping left-right while moving down) from a little before `start` to a
    little after `end`, with jitter; normalised coordinates, which may stray slightly outside [0, 1]."""
    t = np.arange(start - _TRACE_MARGIN_SECONDS, end + _TRACE_MARGIN_SECONDS + 1e-9, _TRACE_STEP_SECONDS)
    u = np.linspace(0.0, 1.0, len(t))
    phase = (u * 2 * _ZIGZAG_SWEEPS) % 2.0
    frac = np.where(phase < 1.0, phase, 2.0 - phase)
    x0, y0, x1, y1 = obj.box
    side = x1 - x0
    xs = x0 - 0.05 * side + frac * 1.1 * side + rng.normal(0, 0.03 * side, len(t))
    ys = y0 + u * (y1 - y0) + rng.normal(0, 0.03 * side, len(t))
    return [
        {"x": round(float(x / width), 4), "y": round(float(y / height), 4), "t": round(float(tt), 3)}
        for x, y, tt in zip(xs, ys, t)
    ]


def _narrative(rng, objects_ltr: List[ShapeObject], width: int, height: int, split: str, image_id: int) -> dict:
    utterances = narrative_utterances(objects_ltr)
    timed, traces, now = [], [], float(rng.uniform(0.5, 1.5))
    for obj, utt in zip(objects_ltr, utterances):
        end = now + len(utt.split()) * float(rng.uniform(*_WORD_SECONDS))
        timed.append({"utterance": utt, "start_time": round(now, 3), "end_time": round(end, 3)})
        traces.append(_trace(rng, obj, round(now, 3), round(end, 3), width, height))
        now = end + float(rng.uniform(*_PAUSE_SECONDS))
    return {
        "dataset_id": f"shapes_{split}",
        "image_id": str(image_id),
        "annotator_id": 0,
        "caption": " ".join(utterances),
        "timed_caption": timed,
        "traces": traces,
        "voice_recording": "",
    }


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def generate_shapes(folder: str, num_train: Optional[int] = None, num_val: Optional[int] = None) -> None:
    """Write the benchmark into `folder` (created; existing files are overwritten). Prefer `ensure_shapes`, which
    generates into a temporary folder and renames it into place."""
    sizes = shapes_sizes(num_train, num_val)
    files = shapes_files(folder)
    instances = {"images": [], "annotations": [], "categories": CATEGORIES}
    refs = []
    for split in SPLITS:
        os.makedirs(os.path.join(files["image_root"], split), exist_ok=True)
        images, vg_anns, cap_anns, narratives = [], [], [], []
        for i in range(sizes[split]):
            rng = np.random.default_rng([_SEED, SPLITS.index(split), i])
            width, height, objects = sample_scene(rng)
            image = render_scene(rng, width, height, objects)
            image_id = _ID_OFFSET[split] + i
            file_name = f"{split}/{image_id:07d}.png"
            cv2.imwrite(os.path.join(files["image_root"], file_name), image[:, :, ::-1])
            image_entry = {"id": image_id, "file_name": file_name, "width": width, "height": height}
            images.append(image_entry)
            instances["images"].append(image_entry)
            ltr = sorted(objects, key=lambda o: (o.box[0] + o.box[2]) / 2)
            for k, cap in enumerate(image_captions(ltr, rng)):
                cap_anns.append({"id": image_id * 10 + k, "image_id": image_id, "caption": cap})
            narratives.append(_narrative(rng, ltr, width, height, split, image_id))
            for k, obj in enumerate(objects):
                ann_id = image_id * 10 + k
                x0, y0, x1, y1 = obj.box
                xywh = [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]
                vg_anns.append(
                    {"id": ann_id, "image_id": image_id, "bbox": xywh, "caption": region_caption(obj),
                     "category_id": 1, "area": round(xywh[2] * xywh[3], 2), "iscrowd": 0}
                )
                polygon = [round(float(v), 2) for v in obj.polygon().reshape(-1)]
                instances["annotations"].append(
                    {"id": ann_id, "image_id": image_id, "bbox": xywh, "segmentation": [polygon],
                     "area": round(float(cv2.contourArea(obj.polygon().astype(np.float32))), 2),
                     "iscrowd": 0, "category_id": _CATEGORY_ID[obj.shape]}
                )
                sentences = [
                    {"sent_id": ann_id * 4 + j, "sent": s, "raw": s, "tokens": s.split()}
                    for j, s in enumerate(referring_expressions(objects, k, rng))
                ]
                refs.append(
                    {"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "split": split,
                     "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences],
                     "category_id": _CATEGORY_ID[obj.shape], "file_name": f"{image_id:07d}_{ann_id}.png"}
                )
        _write_json(files[f"captions_{split}"], {"images": images, "annotations": cap_anns})
        _write_json(
            files[f"vg_{split}"],
            {"images": images, "annotations": vg_anns, "categories": [{"id": 1, "name": "object"}]},
        )
        os.makedirs(os.path.dirname(files[f"ln_{split}"]), exist_ok=True)
        with open(files[f"ln_{split}"], "w") as f:
            f.writelines(json.dumps(n) + "\n" for n in narratives)
    _write_json(files["instances"], instances)
    with open(files["refs"], "wb") as f:
        pickle.dump(refs, f, protocol=2)  # the refer toolkit's files are Python 2 pickles
    _write_json(files["meta"], {"version": FORMAT_VERSION, "sizes": sizes})


def _is_current(folder: str, sizes: Dict[str, int]) -> bool:
    try:
        with open(shapes_files(folder)["meta"]) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    return meta == {"version": FORMAT_VERSION, "sizes": sizes}


@contextlib.contextmanager
def _exclusive(lock_path: str):
    """Hold an exclusive advisory lock on `lock_path` (processes starting together wait for one generator)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the atomic rename alone keeps readers safe
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_shapes(root: str, num_train: Optional[int] = None, num_val: Optional[int] = None) -> str:
    """Generate `<root>/shapes` unless it already holds this version at these sizes; returns its path.

    Safe when several processes start at once: one generates (into a temporary folder renamed into place when
    complete) while the others wait on a lock and then find it done. A folder of another version or other sizes
    is replaced.
    """
    sizes = shapes_sizes(num_train, num_val)
    folder = os.path.join(root, "shapes")
    if _is_current(folder, sizes):
        return folder
    os.makedirs(root, exist_ok=True)
    with _exclusive(os.path.join(root, ".shapes.lock")):
        if _is_current(folder, sizes):
            return folder
        for stale in glob.glob(os.path.join(root, ".shapes.tmp.*")):  # left by killed generators
            shutil.rmtree(stale, ignore_errors=True)
        logger.info(f"generating the shapes benchmark ({sizes['train']} train / {sizes['val']} val) in {folder}")
        tmp = tempfile.mkdtemp(prefix=".shapes.tmp.", dir=root)
        try:
            generate_shapes(tmp, sizes["train"], sizes["val"])
            if os.path.exists(folder):
                logger.warning(f"replacing {folder}: it holds another version or other sizes")
                old = tempfile.mkdtemp(prefix=".shapes.tmp.old.", dir=root)
                os.replace(folder, os.path.join(old, "shapes"))
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder
