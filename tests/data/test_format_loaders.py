"""Each loader on a fixture written in its native format, malformed records, and the real VG sample."""
import importlib.util
import json
import os
import pickle

import numpy as np
import pytest

from fixture_files import write_image, write_json
from pixelllm_d2.data.datasets import (
    load_coco_captions_json,
    load_ln_jsonl,
    load_mdetr_refcoco_json,
    load_refcoco,
    load_refs_pickle,
    load_vg_json,
)
from pixelllm_d2.data.validation import DatasetFileError, ValidationReport
from pixelllm_d2.structures import BoxMode

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VG_SAMPLE = os.path.join(REPO, "..", "shared", "data", "vg_sample")


def _kinds(report):
    return sorted(p.kind for p in report.problems)


# ---------------------------------------------------------------------------------------------------- COCO captions
def test_coco_captions(tmp_path):
    f = write_json(tmp_path / "captions.json", {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30},
                   {"id": 3, "file_name": "c.jpg", "width": 40}],
        "annotations": [{"id": 10, "image_id": 1, "caption": " A dog  runs. "},
                        {"id": 11, "image_id": 1, "caption": "a cat"},
                        {"id": 12, "image_id": 2, "caption": "   "},
                        {"id": 13, "image_id": 9, "caption": "lost"},
                        {"id": 14, "image_id": 1}],
    })
    report = ValidationReport()
    dicts = load_coco_captions_json(f, str(tmp_path / "img"), report=report)
    assert dicts == [{"file_name": str(tmp_path / "img" / "a.jpg"), "image_id": 1, "height": 30, "width": 40,
                      "captions": ["A dog runs.", "a cat"]}]
    assert _kinds(report) == ["bad image entry", "empty caption", "missing field", "unknown image"]
    assert any(p.record.startswith("annotations[2] (id 12") and p.file == f for p in report.problems)


# ----------------------------------------------------------------------------------------------------- Visual Genome
def test_vg_json_and_malformed_records(tmp_path):
    f = tmp_path / "train.json"
    data = {
        "images": [{"id": 5, "file_name": "5.jpg", "width": 100, "height": 80}],
        "annotations": [
            {"id": 1, "image_id": 5, "bbox": [10, 20, 30, 40], "caption": "red car"},
            {"id": 2, "image_id": 5, "bbox": [90, 70, 30, 30], "caption": "cut off"},  # clipped to the image
            {"id": 3, "image_id": 5, "bbox": [float("nan"), 0, 5, 5], "caption": "nan box"},
            {"id": 4, "image_id": 5, "bbox": [10, 10, -5, 5], "caption": "negative box"},
            {"id": 5, "image_id": 5, "bbox": [10, 10, 5, 5], "caption": ""},
            {"id": 6, "image_id": 5, "bbox": [10, 10, 5, 5]},
            {"id": 7, "image_id": 5, "bbox": [200, 200, 5, 5], "caption": "outside"},
        ],
    }
    f.write_text(json.dumps(data))  # json writes NaN as a bare NaN, which json.load reads back
    report = ValidationReport()
    (d,) = load_vg_json(str(f), "/imgs", report=report)
    assert d["file_name"] == "/imgs/5.jpg" and (d["width"], d["height"]) == (100, 80)
    assert d["annotations"] == [
        {"bbox": [10.0, 20.0, 40.0, 60.0], "bbox_mode": BoxMode.XYXY_ABS, "caption": "red car", "id": 1},
        {"bbox": [90.0, 70.0, 100.0, 80.0], "bbox_mode": BoxMode.XYXY_ABS, "caption": "cut off", "id": 2},
    ]
    assert _kinds(report) == ["bad box", "bad box", "bad box", "empty caption", "missing field"]
    messages = {p.record: p.message for p in report.problems}
    assert "non-finite" in messages["annotations[2] (id 3, image 5)"]
    assert "non-positive width or height" in messages["annotations[3] (id 4, image 5)"]
    assert "outside the 100x80 image" in messages["annotations[6] (id 7, image 5)"]


@pytest.mark.parametrize(
    "content, message",
    [(None, "file does not exist"), ("{not json", "not valid json"),
     ('{"images": []}', "expected a list under 'annotations'")],
)
def test_bad_file_is_a_clear_error(tmp_path, content, message):
    f = tmp_path / "bad.json"
    if content is not None:
        f.write_text(content)
    with pytest.raises(DatasetFileError, match=f"{f}: {message}"):
        load_vg_json(str(f), str(tmp_path))


def _load_prepare_vg():
    spec = importlib.util.spec_from_file_location("prepare_vg", os.path.join(REPO, "datasets", "prepare_vg.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not os.path.isdir(VG_SAMPLE), reason="../shared/data/vg_sample is absent")
def test_real_vg_sample_through_converter_and_loader(tmp_path):
    out = tmp_path / "vg" / "test.json"
    assert _load_prepare_vg().main([
        "--region-descriptions", os.path.join(VG_SAMPLE, "region_descriptions.json"),
        "--image-data", os.path.join(VG_SAMPLE, "image_data.json"), "--out", str(out),
    ]) == 0
    with open(os.path.join(VG_SAMPLE, "region_descriptions.json")) as f:
        native = json.load(f)
    report = ValidationReport()
    dicts = load_vg_json(str(out), os.path.join(VG_SAMPLE, "images"), report=report)
    assert len(report) == 0 and [d["image_id"] for d in dicts] == [1, 2]
    for d, entry in zip(dicts, native):
        assert os.path.isfile(d["file_name"]) and (d["width"], d["height"]) == (800, 600)
        assert len(d["annotations"]) == len(entry["regions"])
        for a, r in zip(d["annotations"], entry["regions"]):
            assert a["id"] == r["region_id"] and a["caption"] == r["phrase"].lower()
            x1 = min(r["x"] + r["width"], 800)
            y1 = min(r["y"] + r["height"], 600)
            np.testing.assert_allclose(a["bbox"], [r["x"], r["y"], x1, y1])


def test_vg_converter_drops_and_counts_bad_regions(tmp_path):
    prepare_vg = _load_prepare_vg()
    regions = [{"id": 1, "regions": [
        {"region_id": 1, "image_id": 1, "x": 1, "y": 2, "width": 3, "height": 4, "phrase": "A Red Ball."},
        {"region_id": 2, "image_id": 1, "x": 1, "y": 2, "width": 0, "height": 4, "phrase": "flat"},
        {"region_id": 3, "image_id": 1, "x": 1, "y": 2, "width": 3, "height": 4, "phrase": " "},
    ]}, {"id": 7, "regions": []}]
    out, report = prepare_vg.convert(regions, [{"image_id": 1, "width": 10, "height": 10, "url": "http://x/1.jpg"}])
    assert out["images"] == [{"id": 1, "file_name": "1.jpg", "width": 10, "height": 10}]
    assert [(a["id"], a["caption"], a["bbox"]) for a in out["annotations"]] == [(1, "a red ball", [1.0, 2.0, 3.0, 4.0])]
    assert _kinds(report) == ["bad box", "empty caption", "unknown image"]


# ----------------------------------------------------------------------------------------------------------- RefCOCO
def _refer_fixture(tmp_path):
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 64, "height": 48}],
        "annotations": [
            {"id": 100, "image_id": 1, "bbox": [4, 6, 20, 10], "category_id": 3,
             "segmentation": [[4, 6, 24, 6, 24, 16, 4, 16]], "area": 200, "iscrowd": 0},
            {"id": 101, "image_id": 1, "bbox": [30, 6, 20, 10], "category_id": 3,
             "segmentation": {"size": [48, 64], "counts": [0, 3072]}, "area": 200, "iscrowd": 0},
            {"id": 200, "image_id": 2, "bbox": [0, 0, -1, 10], "category_id": 1, "segmentation": [], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }
    sent = lambda i, s: {"sent_id": i, "sent": s, "raw": s.upper(), "tokens": s.split()}  # noqa: E731
    refs = [
        {"ref_id": 0, "ann_id": 100, "image_id": 1, "split": "train", "category_id": 3,
         "sentences": [sent(0, "left car"), sent(1, "")], "sent_ids": [0, 1]},
        {"ref_id": 1, "ann_id": 101, "image_id": 1, "split": "val", "category_id": 3,
         "sentences": [sent(2, "right car"), sent(3, "car on the right")], "sent_ids": [2, 3]},
        {"ref_id": 2, "ann_id": 200, "image_id": 2, "split": "val", "sentences": [sent(4, "bad box")]},
        {"ref_id": 3, "ann_id": 999, "image_id": 2, "split": "val", "sentences": [sent(5, "no ann")]},
        {"ref_id": 4, "image_id": 2, "split": "val", "sentences": [sent(6, "no ann id")]},
    ]
    refs_file = tmp_path / "refcoco" / "refs(unc).p"
    refs_file.parent.mkdir(parents=True)
    refs_file.write_bytes(pickle.dumps(refs, protocol=2))
    return str(refs_file), write_json(tmp_path / "refcoco" / "instances.json", instances)


def test_refcoco_refs_and_instances(tmp_path):
    refs_file, instances = _refer_fixture(tmp_path)
    report = ValidationReport()
    (d,) = load_refcoco(refs_file, instances, "/coco/train2014", split="val", report=report)
    assert d["file_name"] == "/coco/train2014/COCO_train2014_000000000001.jpg"
    (a,) = d["annotations"]
    assert a["bbox"] == [30.0, 6.0, 50.0, 16.0] and a["bbox_mode"] == BoxMode.XYXY_ABS
    assert (a["sentences"], a["sent_ids"], a["ref_id"], a["ann_id"], a["category_id"]) == (
        ["right car", "car on the right"], [2, 3], 1, 101, 3)
    assert a["segmentation"] == {"size": [48, 64], "counts": [0, 3072]}
    assert _kinds(report) == ["bad box", "missing field", "unknown annotation"]

    report = ValidationReport()
    (d,) = load_refcoco(refs_file, instances, "/coco", split="train", report=report)
    assert d["annotations"][0]["sentences"] == ["left car"]  # the empty sentence is skipped
    assert _kinds(report) == ["empty caption"] and "refs[0] (ref_id 0) sentences[1]" in str(report.problems[0])

    with pytest.raises(DatasetFileError, match=r"no refs of split 'testA'; the file has splits \['train', 'val'\]"):
        load_refcoco(refs_file, instances, "/coco", split="testA")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "refs(unc).p"
    evil.write_bytes(pickle.dumps([{"ref_id": 0, "payload": _RunsCode()}], protocol=2))
    with pytest.raises(DatasetFileError, match=r"refusing to load global '(posix|os|nt)\.system'"):
        load_refs_pickle(str(evil))
    assert not (tmp_path / "pwned_by_pickle").exists()
    # Plain containers (sets included, which protocol 2 pickles through a global) are fine.
    ok = tmp_path / "ok.p"
    ok.write_bytes(pickle.dumps([{"a": (1, 2.5, "x", None), "s": {1, 2}}], protocol=2))
    assert load_refs_pickle(str(ok)) == [{"a": (1, 2.5, "x", None), "s": {1, 2}}]
    notlist = tmp_path / "d.p"
    notlist.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DatasetFileError, match="expected a list of refs"):
        load_refs_pickle(str(notlist))


def test_mdetr_refcoco_json(tmp_path):
    f = write_json(tmp_path / "finetune_refcoco_val.json", {
        "images": [
            {"id": 0, "file_name": "COCO_train2014_000000000042.jpg", "width": 64, "height": 48,
             "caption": "the dog", "original_id": 42},
            {"id": 1, "file_name": "COCO_train2014_000000000042.jpg", "width": 64, "height": 48,
             "caption": "brown dog", "original_id": 42},
            {"id": 2, "file_name": "COCO_train2014_000000000042.jpg", "width": 64, "height": 48,
             "caption": "the cat", "original_id": 42},
            {"id": 3, "file_name": "x.jpg", "width": 64, "height": 48, "caption": "", "original_id": 43},
        ],
        "annotations": [
            {"id": 0, "image_id": 0, "bbox": [1, 2, 10, 10], "category_id": 18, "original_id": 7,
             "segmentation": [[1, 2, 11, 2, 11, 12]]},
            {"id": 1, "image_id": 1, "bbox": [1, 2, 10, 10], "category_id": 18, "original_id": 7},
            {"id": 2, "image_id": 2, "bbox": [30, 2, 10, 10], "category_id": 17, "original_id": 8},
            {"id": 3, "image_id": 3, "bbox": [30, 2, 10, 10], "category_id": 17, "original_id": 9},
        ],
    })
    report = ValidationReport()
    (d,) = load_mdetr_refcoco_json(f, "/coco/train2014", report=report)
    assert d["image_id"] == 42 and d["file_name"].endswith("000000000042.jpg")
    dog, cat = d["annotations"]
    assert (dog["ann_id"], dog["sentences"], dog["sent_ids"], dog["bbox"]) == (
        7, ["the dog", "brown dog"], [0, 1], [1.0, 2.0, 11.0, 12.0])
    assert dog["segmentation"] == [[1, 2, 11, 2, 11, 12]] and "segmentation" not in cat
    assert (cat["ann_id"], cat["sentences"]) == (8, ["the cat"])
    assert _kinds(report) == ["empty caption"]


# ------------------------------------------------------------------------------------------- Localized Narratives
def _narrative(image_id, caption="a dog", traces=None, **extra):
    rec = {
        "dataset_id": "mscoco_val2017", "image_id": str(image_id), "annotator_id": 3, "caption": caption,
        "timed_caption": [{"utterance": "a", "start_time": 0.0, "end_time": 0.5},
                          {"utterance": "dog", "start_time": 0.5, "end_time": 1.0}],
        "traces": traces if traces is not None else [[{"x": 0.1, "y": 0.2, "t": 0.0}, {"x": 0.5, "y": 0.6, "t": 1.0}],
                                                     [{"x": 1.2, "y": 0.6, "t": 2.0}]],
        "voice_recording": "coco_val/x.ogg",
    }
    rec.update(extra)
    return rec


def test_ln_jsonl_offline_step_and_malformed_records(tmp_path):
    root = tmp_path / "val2017"
    write_image(root / "000000000001.jpg", np.zeros((30, 40, 3)))
    write_image(root / "000000000002.jpg", np.zeros((20, 10, 3)))
    lines = [
        json.dumps(_narrative(1)),
        json.dumps(_narrative(1, caption="second narrative", annotator_id=4)),
        json.dumps(_narrative(2, traces=[[{"x": 0.1, "y": 0.2, "t": 0.0}]])),  # one point: skipped
        json.dumps(_narrative(2, caption="  ")),
        json.dumps({k: v for k, v in _narrative(2).items() if k != "traces"}),
        json.dumps(_narrative(2, traces=[[{"x": float("nan"), "y": 0.2, "t": 0.0}, {"x": 0.1, "y": 0.2, "t": 1}]])),
        "{broken",
        "",
    ]
    f = tmp_path / "coco_val_localized_narratives.jsonl"
    f.write_text("\n".join(lines))
    report = ValidationReport()
    (d,) = load_ln_jsonl(str(f), str(root), report=report)
    assert (d["image_id"], d["file_name"], d["width"], d["height"]) == (1, str(root / "000000000001.jpg"), 40, 30)
    assert [n["caption"] for n in d["narratives"]] == ["a dog", "second narrative"]
    assert [n["annotator_id"] for n in d["narratives"]] == ["3", "4"]
    first, second = d["narratives"][0]["utterances"]
    # x(t) through (0, .1) (1, .5) (2, 1.2): utterance [0, .5] spans x .1-.3; [.5, 1] spans .3-.5
    np.testing.assert_allclose(first["box"], [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(second["box"], [0.3, 0.4, 0.5, 0.6])
    assert len(first["points"]) == 16 and first["utterance"] == "a"
    assert _kinds(report) == ["bad json", "bad trace", "empty caption", "missing field", "short trace"]
    assert all(p.file == str(f) and p.record.startswith("line ") for p in report.problems)
    assert any("trace has 1 point(s)" in p.message and p.record.startswith("line 3 (image 2") for p in report.problems)


def test_ln_sizes_from_image_info_json(tmp_path):
    info = write_json(tmp_path / "captions.json", {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 640, "height": 480}], "annotations": []})
    f = tmp_path / "ln.jsonl"
    f.write_text(json.dumps(_narrative(1)) + "\n" + json.dumps(_narrative(5)) + "\n")
    report = ValidationReport()
    dicts = load_ln_jsonl(str(f), str(tmp_path / "missing"), image_info_json=info, report=report)
    # image 1: size from the json (no image needed); image 5: not in the json, header unreadable -> skipped
    assert [(d["image_id"], d["width"], d["height"]) for d in dicts] == [(1, 640, 480)]
    assert _kinds(report) == ["unreadable image"]
