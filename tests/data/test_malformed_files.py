"""Malformed dataset files: the loaders and tools/validate_dataset.py never crash with a Python traceback; they
name the file and the record. Repeated ids are refused (never skipped). A seeded mutation fuzzer covers every
format."""
import copy
import json
import os
import pickle
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from fixture_files import write_image
from pixelllm_d2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from pixelllm_d2.data.datasets import (
    load_coco_captions_json,
    load_ln_jsonl,
    load_mdetr_refcoco_json,
    load_refcoco,
    load_vg_json,
    register_vg_json,
)
from pixelllm_d2.data.validate import validate_source
from pixelllm_d2.data.validation import DatasetFileError, DuplicateIdError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
W, H = 40, 30


# -------------------------------------------------------------------------------------------- valid base records
def _images():
    return [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H} for i in range(2)]


def _vg():
    return {"images": _images(), "annotations": [
        {"id": 1, "image_id": 0, "bbox": [1, 2, 10, 10], "caption": "red car"},
        {"id": 2, "image_id": 1, "bbox": [3, 2, 10, 10], "caption": "blue car"}]}


def _captions():
    return {"images": _images(), "annotations": [
        {"id": 1, "image_id": 0, "caption": "a dog"}, {"id": 2, "image_id": 1, "caption": "a cat"}]}


def _ln():
    return [{"image_id": str(i), "annotator_id": 1, "caption": "a b",
             "timed_caption": [{"utterance": "a b", "start_time": 0, "end_time": 1}],
             "traces": [[{"x": 0.1, "y": 0.1, "t": 0}, {"x": 0.2, "y": 0.2, "t": 1}]]} for i in range(2)]


def _instances():
    return {"images": _images(), "annotations": [
        {"id": 10 + i, "image_id": i, "bbox": [1, 1, 10, 10], "category_id": 1,
         "segmentation": [[1, 1, 11, 1, 11, 11]]} for i in range(2)]}


def _refs():
    return [{"ref_id": i, "ann_id": 10 + i, "image_id": i, "split": "val", "category_id": 1,
             "sentences": [{"sent_id": 100 + i, "sent": "the thing"}], "sent_ids": [100 + i]} for i in range(2)]


def _mdetr():
    return {"images": [dict(_images()[i], id=50 + i, caption="the thing", original_img_id=i) for i in range(2)],
            "annotations": [{"id": 70 + i, "image_id": 50 + i, "bbox": [1, 1, 10, 10], "original_id": 10 + i,
                             "category_id": 1} for i in range(2)]}


BASES = {"vg": _vg, "coco_captions": _captions, "ln": _ln, "refs": _refs, "instances": _instances, "mdetr": _mdetr}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i in range(2):
        for name in (f"{i}.jpg", f"{i:012d}.jpg"):
            write_image(root / name, np.zeros((H, W, 3)))
    return str(root)


# --------------------------------------------------------------------------------------------- writing the files
_DEEP = re.compile(r'"__DEEP(\d+)__"')


def _text(obj, fmt: str) -> str:
    """JSON text (one object per line for LN); "__DEEPn__" strings become n nested arrays (json.dumps itself
    cannot write what is too deep to read back)."""
    if fmt == "ln":
        rows = obj if isinstance(obj, list) else [obj]
        text = "\n".join(json.dumps(r) for r in rows)
    else:
        text = json.dumps(obj)
    return _DEEP.sub(lambda m: "[" * int(m.group(1)) + "0" + "]" * int(m.group(1)), text)


def _write(folder: str, fmt: str, obj, corrupt=None) -> dict:
    """Write `obj` as format `fmt` (+ its companion file) and return the validate_source arguments."""
    if fmt in ("refs", "instances"):
        refs = obj if fmt == "refs" else _refs()
        inst = obj if fmt == "instances" else _instances()
        refs_path, inst_path = os.path.join(folder, "refs.p"), os.path.join(folder, "instances.json")
        data = {refs_path: pickle.dumps(refs, protocol=2), inst_path: _text(inst, "json").encode()}
        target = refs_path if fmt == "refs" else inst_path
        call = dict(fmt="refcoco", file=refs_path, instances_json=inst_path)
    else:
        ext = "jsonl" if fmt == "ln" else "json"
        target = os.path.join(folder, f"{fmt}.{ext}")
        data = {target: _text(obj, fmt).encode()}
        call = dict(fmt={"mdetr": "refcoco"}.get(fmt, fmt), file=target)
    if corrupt is not None:
        data[target] = corrupt(data[target])
    for path, raw in data.items():
        with open(path, "wb") as f:
            f.write(raw)
    return call


# -------------------------------------------------------------------------------------------------- the fuzzer
_VALUES = [None, "", "x", "1", 1.5, -1, 0, 10**30, 1e308, -1e308, float("nan"), float("inf"), True, [], {},
           [1, 2], {"a": 1}, "\u00e9\u4e2d", "__DEEP5__", "__DEEP5000__"]


def _paths(obj, prefix=()):
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _mutate(obj, rng: random.Random):
    """One random edit: delete a key, repeat a record, or put a value of another type anywhere."""
    obj = copy.deepcopy(obj)
    paths = list(_paths(obj))
    path = paths[rng.randrange(len(paths))]
    if not path:
        return rng.choice(_VALUES + [[obj]])
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    key, op = path[-1], rng.randrange(4)
    if op == 0 and isinstance(parent, dict):
        del parent[key]
    elif op == 1 and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    else:
        parent[key] = rng.choice(_VALUES)
    return obj


def _byte_damage(rng: random.Random):
    r = rng.random()
    if r < 0.1:
        return lambda b: b[: rng.randrange(len(b) + 1)]  # truncated
    if r < 0.2:
        return lambda b: (lambda i: b[:i] + b"\xff\xfe" + b[i:])(rng.randrange(len(b) + 1))  # invalid UTF-8
    return None


def _check_dicts(dicts):
    """What the loaders promise of what they return, whatever the input."""
    for d in dicts:
        assert isinstance(d["file_name"], str) and isinstance(d["image_id"], (int, str))
        assert isinstance(d["width"], int) and isinstance(d["height"], int) and d["width"] > 0 and d["height"] > 0
        for a in d.get("annotations", []):
            box = np.asarray(a["bbox"], dtype=np.float64)
            assert np.isfinite(box).all() and (box[2:] > box[:2]).all()
            assert 0 <= box[0] and box[2] <= d["width"] and 0 <= box[1] and box[3] <= d["height"]
        for n in d.get("narratives", []):
            for u in n["utterances"]:
                assert np.isfinite(u["box"]).all() and np.isfinite(u["center"]).all()


def _load(call: dict, image_root: str):
    fmt, file = call["fmt"], call["file"]
    if fmt == "vg":
        return load_vg_json(file, image_root)
    if fmt == "coco_captions":
        return load_coco_captions_json(file, image_root)
    if fmt == "ln":
        return load_ln_jsonl(file, image_root)
    if file.endswith(".json"):
        return load_mdetr_refcoco_json(file, image_root)
    return load_refcoco(file, call["instances_json"], image_root)


@pytest.mark.parametrize("fmt", sorted(BASES))
def test_fuzzed_files_never_crash_the_loader_or_the_validator(fmt, tmp_path, image_root):
    rng = random.Random(f"pixelllm-fuzz-{fmt}")
    for trial in range(150):
        call = _write(str(tmp_path), fmt, _mutate(BASES[fmt](), rng), _byte_damage(rng))
        where = f"{fmt} trial {trial}"
        report = validate_source(image_root=image_root, **call)  # never raises
        for p in report.problems:
            assert p.file and p.record and p.message, where
        try:
            dicts = _load(call, image_root)
        except DatasetFileError as e:
            assert str(e).startswith(os.path.dirname(call["file"])) or "repeated id" in str(e), (where, str(e))
            assert report.problems, f"{where}: the loader refused the file but the validator saw nothing wrong"
            continue
        _check_dicts(dicts)


# ---------------------------------------------------------------------------------------- named malformed cases
def _ln_with(**changes):
    rows = _ln()
    rows[0].update(changes)
    return rows


CASES = {
    "ln invalid utf-8": ("ln", _ln(), lambda b: b.replace(b'"a b"', b'"a \xff b"', 1), "line 1", "not UTF-8"),
    "ln image_id string": ("ln", _ln_with(image_id="cat"), None, "line 1", "does not fit the file name pattern"),
    "ln image_id float": ("ln", _ln_with(image_id=1.5), None, "line 1", "image_id must be an integer or a"),
    "ln image_id null": ("ln", _ln_with(image_id=None), None, "line 1", "image_id must be an integer or a"),
    "ln image_id list": ("ln", _ln_with(image_id=[1]), None, "line 1", "image_id must be an integer or a"),
    "ln huge times": ("ln", _ln_with(timed_caption=[{"utterance": "a b", "start_time": -1e308, "end_time": 1e308}]),
                      None, "line 1 (image 0", "utterance boxes are not finite"),
    "ln deep json": ("ln", _ln_with(caption="__DEEP5000__"), None, "line 1", "nested too deeply"),
    "vg id dict": ("vg", {"images": _images(), "annotations": [dict(_vg()["annotations"][0], id={"a": 1})]},
                   None, "annotations[0]", "id must be an integer"),
    "vg image_id list": ("vg", {"images": _images(), "annotations": [dict(_vg()["annotations"][0], image_id=[0])]},
                         None, "annotations[0]", "image_id must be an integer"),
    "vg file_name int": ("vg", {"images": [dict(_images()[0], file_name=7)], "annotations": []}, None,
                         "images[0] (id 0)", "file_name must be a non-empty string"),
    "vg deep json": ("vg", {"images": "__DEEP5000__", "annotations": []}, None, "file", "nested too deeply"),
    "captions image id list": ("coco_captions", {"images": [dict(_images()[0], id=[0])], "annotations": []}, None,
                               "images[0]", "id must be an integer"),
    "refs ref_id dict": ("refs", [dict(_refs()[0], ref_id={"x": 1})], None, "refs[0]", "ref_id must be an integer"),
    "instances id list": ("instances", dict(_instances(), annotations=[dict(_instances()["annotations"][0], id=[1])]),
                          None, "annotations[0]", "id must be an integer"),
    "mdetr image_id dict": ("mdetr", dict(_mdetr(), annotations=[dict(_mdetr()["annotations"][0], image_id={})]),
                            None, "annotations[0]", "image_id must be an integer"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_malformed_class_is_named_by_the_validator(case, tool, tmp_path, image_root, capsys):
    fmt, obj, corrupt, record, message = CASES[case]
    call = _write(str(tmp_path), fmt, obj, corrupt)
    argv = ["--file", call["file"], "--format", call["fmt"], "--image-root", image_root]
    if "instances_json" in call:
        argv += ["--instances", call["instances_json"]]
    assert tool.main(argv) == 1
    out = capsys.readouterr().out
    line = next((x for x in out.splitlines() if message in x), None)
    assert line is not None, out
    assert record in line and ("instances.json" in line if fmt == "instances" else call["file"] in line), line


def test_validator_command_exits_non_zero_without_a_traceback(tmp_path, image_root):
    call = _write(str(tmp_path), "ln", _ln_with(image_id={"nested": [1]}), lambda b: b + b"\n\xff\xff{")
    p = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "validate_dataset.py"), "--file", call["file"], "--format", "ln",
         "--image-root", image_root],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert f"{call['file']}: line 1 (image" not in p.stdout  # the record with a bad id is named by its line only
    assert f"{call['file']}: line 1: bad id: image_id must be an integer or a non-empty string" in p.stdout
    assert f"{call['file']}: line 3: bad json: not UTF-8 text" in p.stdout


# ------------------------------------------------------------------------------------------------- repeated ids
DUPLICATES = {
    "vg region id": ("vg", {"images": _images(), "annotations": [_vg()["annotations"][0]] * 2},
                     "annotations[1] (id 1, image 0)", "region id 1 repeats annotations[0] (id 1, image 0)"),
    "vg image id": ("vg", {"images": [_images()[0], dict(_images()[1], id=0)], "annotations": _vg()["annotations"][:1]},
                    "images[1] (id 0)", "image id 0 repeats images[0] (id 0)"),
    "refcoco sent_id": ("refs", [_refs()[0], dict(_refs()[1], sentences=[{"sent_id": 100, "sent": "other"}])],
                        "refs[1] (ref_id 1) sentences[0]", "sent_id 100 repeats refs[0] (ref_id 0) sentences[0]"),
    "refcoco ref_id": ("refs", [_refs()[0], dict(_refs()[1], ref_id=0)], "refs[1] (ref_id 0)", "ref_id 0 repeats"),
    "instances annotation id": ("instances", dict(_instances(), annotations=[_instances()["annotations"][0]] * 2),
                                "annotations[1] (id 10)", "annotation id 10 repeats annotations[0] (id 10)"),
    "mdetr expression id": ("mdetr", dict(_mdetr(), images=[_mdetr()["images"][0]] * 2), "images[1] (id 50)",
                            "image id 50 repeats images[0] (id 50)"),
}


@pytest.mark.parametrize("case", sorted(DUPLICATES))
def test_repeated_ids_are_reported_and_refused(case, tmp_path, image_root):
    fmt, obj, record, message = DUPLICATES[case]
    call = _write(str(tmp_path), fmt, obj)
    report = validate_source(image_root=image_root, **call)
    dup = [p for p in report.problems if p.kind == "duplicate id"]
    assert [(p.record, message in p.message) for p in dup] == [(record, True)], report.problems
    with pytest.raises(DuplicateIdError, match=re.escape(f"{record}: {message}")):
        _load(call, image_root)


def test_repeated_ids_stop_a_run_before_inference(tmp_path, image_root):
    call = _write(str(tmp_path), "vg", {"images": _images(), "annotations": [_vg()["annotations"][0]] * 2})
    register_vg_json("dup_vg_test", call["file"], image_root)
    try:
        with pytest.raises(DuplicateIdError, match="region id 1 repeats"):
            get_detection_dataset_dicts("dup_vg_test")
    finally:
        DatasetCatalog.remove("dup_vg_test")
        MetadataCatalog.remove("dup_vg_test")


def test_a_clean_file_still_loads(tmp_path, image_root):
    for fmt in sorted(BASES):
        call = _write(str(tmp_path), fmt, BASES[fmt]())
        report = validate_source(image_root=image_root, **call)
        assert not report.problems, (fmt, report.problems)
        dicts = _load(call, image_root)
        assert len(dicts) == 2, fmt
        _check_dicts(dicts)
