"""The embedded shapes benchmark: deterministic, fast, concurrent-safe generation; texts and geometry agree."""
import hashlib
import json
import multiprocessing
import os
import time

import numpy as np
import pytest
import torch

from pixelllm_d2.data import DatasetCatalog, MetadataCatalog
from pixelllm_d2.data.datasets.shapes import ensure_shapes, generate_shapes, shapes_files, shapes_sizes
from pixelllm_d2.data.datasets.shapes_scenes import ShapeObject
from pixelllm_d2.data.datasets.shapes_text import COLOR_RGB, COLORS, POSITIONS, SHAPES, SIZES, referring_expressions
from pixelllm_d2.data.detection_utils import read_image
from pixelllm_d2.structures import box_iou
from pixelllm_d2.text import build_tokenizer


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            h.update(os.path.relpath(os.path.join(dirpath, f), folder).encode())
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_generation_is_deterministic_and_fast(tmp_path):
    start = time.perf_counter()
    generate_shapes(str(tmp_path / "a"), 12, 4)
    elapsed = time.perf_counter() - start
    generate_shapes(str(tmp_path / "b"), 12, 4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert elapsed < 5.0  # ~0.1 s on 2 cores; 2000 + 100 images take ~10 s
    # Scene i depends on (split, i) only: a smaller benchmark is a prefix of a larger one.
    generate_shapes(str(tmp_path / "c"), 5, 2)
    for name in ("train/0000003.png", "val/1000002.png"):
        a = (tmp_path / "a" / "images" / name).read_bytes()
        assert a == (tmp_path / "c" / "images" / name).read_bytes()


def test_sizes_from_arguments_and_environment(monkeypatch):
    monkeypatch.setenv("PIXELLLM_SHAPES_NUM_TRAIN", "33")
    assert shapes_sizes() == {"train": 33, "val": 100}
    assert shapes_sizes(num_val=7) == {"train": 33, "val": 7}
    with pytest.raises(ValueError, match="must be >= 1"):
        shapes_sizes(num_train=0)


def test_generated_on_first_use_in_the_dataset_root(shapes_root):
    dicts = DatasetCatalog.get("shapes_vg_val")
    assert len(dicts) == 6 and os.path.isfile(os.path.join(shapes_root, "shapes", "meta.json"))
    assert MetadataCatalog.get("shapes_vg_val").json_file == os.path.join(shapes_root, "shapes", "vg", "test.json")
    assert len(DatasetCatalog.get("shapes_ln_train")) == 20


def _ensure_in_child(root, barrier, queue):
    barrier.wait()  # all start together
    try:
        queue.put(ensure_shapes(root, 30, 5))
    except BaseException as e:  # reported to the parent
        queue.put(repr(e))


def test_concurrent_processes_get_one_complete_folder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_ensure_in_child, args=(str(tmp_path), barrier, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [str(tmp_path / "shapes")] * 3 and all(p.exitcode == 0 for p in procs)
    assert sorted(os.listdir(tmp_path)) == [".shapes.lock", "shapes"]  # no temporary folder left
    assert len(os.listdir(tmp_path / "shapes" / "images" / "train")) == 30
    # A request at other sizes replaces the folder.
    ensure_shapes(str(tmp_path), 4, 2)
    assert len(os.listdir(tmp_path / "shapes" / "images" / "train")) == 4


def _scene_objects(shapes_root, split):
    """image_id -> {ann_id: ShapeObject} rebuilt from the VG json (captions "size colour shape") of a split."""
    out = {}
    for d in DatasetCatalog.get(f"shapes_vg_{split}"):
        out[d["image_id"]] = {
            a["id"]: ShapeObject(*reversed(a["caption"].split()), box=tuple(a["bbox"]))
            for a in d["annotations"]
        }
    return out


def _matches(expression, obj, objects):
    """Does `expression` describe `obj` when read literally against the scene `objects`?"""
    words = expression.split()
    if any(w in words for w in COLORS) and obj.color not in words:
        return False
    if any(w in words for w in SHAPES) and obj.shape not in words:
        return False
    if any(w in words for w in SIZES) and obj.size not in words:
        return False
    for pos in POSITIONS:
        if pos in words:
            peers = [o for o in objects if (o.color, o.shape) == (obj.color, obj.shape)]
            key = {"left": lambda o: o.box[0], "right": lambda o: -o.box[2],
                   "top": lambda o: o.box[1], "bottom": lambda o: -o.box[3]}[pos]
            if min(peers, key=key) is not obj:
                return False
    return True


@pytest.mark.parametrize("split", ["train", "val"])
def test_referring_expressions_are_unambiguous(shapes_root, split):
    scenes = _scene_objects(shapes_root, split)
    n_expr = 0
    for d in DatasetCatalog.get(f"shapes_refcoco_{split}"):
        objects = list(scenes[d["image_id"]].values())
        for a in d["annotations"]:
            target = scenes[d["image_id"]][a["ann_id"]]
            assert 1 <= len(a["sentences"]) <= 3
            for s in a["sentences"]:
                assert [o for o in objects if _matches(s, o, objects)] == [target], s
                n_expr += 1
            np.testing.assert_allclose(a["bbox"], target.box, atol=0.02)
    assert n_expr > 3 * len(scenes)


def test_expressions_use_size_then_position():
    rng = np.random.default_rng(0)
    a = ShapeObject("circle", "red", "small", (10, 10, 30, 30))
    b = ShapeObject("circle", "red", "large", (50, 10, 90, 50))
    c = ShapeObject("circle", "red", "small", (100, 10, 120, 30))
    d = ShapeObject("square", "blue", "small", (10, 60, 30, 80))
    assert referring_expressions([a, b, d], 0, rng)[0] == "the small red circle"
    assert referring_expressions([a, c, d], 0, rng)[0] == "the red circle on the left"
    assert referring_expressions([a, c, d], 1, rng)[0] == "the red circle on the right"
    assert referring_expressions([a, d], 1, rng)[0] == "the blue square"
    below = ShapeObject("circle", "red", "small", (10, 40, 30, 60))
    assert referring_expressions([a, below], 1, rng)[0] == "the red circle at the bottom"


def test_images_masks_and_colours(shapes_root):
    for d in DatasetCatalog.get("shapes_refcoco_val"):
        img = read_image(d["file_name"])
        assert img.shape == (d["height"], d["width"], 3)
        assert 192 <= d["width"] <= 320 and 192 <= d["height"] <= 320
        for a in d["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            side = x1 - x0
            assert 0.13 * min(img.shape[:2]) <= side <= 0.37 * min(img.shape[:2])
            centre = img[int((y0 + y1) / 2), int((x0 + x1) / 2)] if a["category_id"] != 3 else \
                img[int(y0 + 0.75 * side), int((x0 + x1) / 2)]
            assert tuple(int(v) for v in centre) in set(COLOR_RGB.values())
        corners = img[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.min() >= 160  # light background away from objects


def test_narrative_traces_move_over_the_named_objects(shapes_root):
    scenes = _scene_objects(shapes_root, "train")
    for d in DatasetCatalog.get("shapes_ln_train"):
        (narr,) = d["narratives"]
        ltr = sorted(scenes[d["image_id"]].values(), key=lambda o: o.box[0] + o.box[2])
        assert len(narr["utterances"]) == len(ltr)
        assert narr["caption"] == " ".join(u["utterance"] for u in narr["utterances"])
        times = [(u["start_time"], u["end_time"]) for u in narr["utterances"]]
        assert all(s < e for s, e in times) and all(e0 < s1 for (_, e0), (s1, _) in zip(times, times[1:]))
        for u, obj in zip(narr["utterances"], ltr):
            assert u["utterance"].endswith(f"{obj.size} {obj.color} {obj.shape}")
            trace_box = torch.tensor([u["box"]]) * torch.tensor([d["width"], d["height"]] * 2)
            assert box_iou(trace_box, torch.tensor([obj.box])).item() > 0.6


def test_every_generated_text_tokenizes_without_unknown(shapes_root):
    tok = build_tokenizer("shapes")
    texts = set()
    for split in ("train", "val"):
        texts |= {n["caption"] for d in DatasetCatalog.get(f"shapes_ln_{split}") for n in d["narratives"]}
        texts |= {u["utterance"] for d in DatasetCatalog.get(f"shapes_ln_{split}")
                  for n in d["narratives"] for u in n["utterances"]}
        texts |= {c for d in DatasetCatalog.get(f"shapes_captions_{split}") for c in d["captions"]}
        texts |= {s for d in DatasetCatalog.get(f"shapes_refcoco_{split}") for a in d["annotations"]
                  for s in a["sentences"]}
        texts |= {a["caption"] for d in DatasetCatalog.get(f"shapes_vg_{split}") for a in d["annotations"]}
    assert len(texts) > 100
    for t in texts:
        ids = tok.encode(t, 128)
        assert tok.unk_id not in ids, t
        assert tok.decode(ids) == t  # word-level: lossless round trip


def test_files_are_in_the_real_formats(shapes_root):
    files = shapes_files(os.path.join(shapes_root, "shapes"))
    DatasetCatalog.get("shapes_captions_val")  # make sure it exists
    with open(files["ln_val"]) as f:
        rec = json.loads(f.readline())
    assert set(rec) == {"dataset_id", "image_id", "annotator_id", "caption", "timed_caption", "traces",
                        "voice_recording"}
    assert set(rec["traces"][0][0]) == {"x", "y", "t"}
    with open(files["vg_val"]) as f:
        vg = json.load(f)
    assert set(vg["images"][0]) == {"id", "file_name", "width", "height"}
    assert {"id", "image_id", "bbox", "caption"} <= set(vg["annotations"][0])
    with open(files["instances"]) as f:
        inst = json.load(f)
    assert isinstance(inst["annotations"][0]["segmentation"][0], list)
    assert {c["name"] for c in inst["categories"]} == set(SHAPES)
