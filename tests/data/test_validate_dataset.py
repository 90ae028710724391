"""tools/validate_dataset.py: reports every kind of malformed record with file and record; exit status."""
import json
import os

import numpy as np

from fixture_files import truncate_file, write_image, write_json

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _vg_fixture(tmp_path, broken=True):
    for i in range(3):
        write_image(tmp_path / f"{i}.jpg", np.random.default_rng(i).integers(0, 255, (40, 60, 3)))
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 60, "height": 40} for i in range(3)]
    anns = [{"id": 1, "image_id": 0, "bbox": [1, 2, 10, 10], "caption": "good"}]
    if broken:
        truncate_file(tmp_path / "1.jpg")
        images.append({"id": 3, "file_name": "missing.jpg", "width": 60, "height": 40})
        images.append({"id": 4, "file_name": "4.jpg", "width": 60})
        images[2]["width"] = 61  # size mismatch
        anns += [
            {"id": 2, "image_id": 0, "bbox": [float("nan"), 2, 10, 10], "caption": "nan"},
            {"id": 3, "image_id": 0, "bbox": [1, 2, -10, 10], "caption": "negative"},
            {"id": 4, "image_id": 0, "bbox": [1, 2, 10, 10], "caption": ""},
            {"id": 5, "image_id": 0, "bbox": [1, 2, 10, 10]},
        ]
    path = tmp_path / "vg.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return str(path)


def test_reports_every_problem_and_fails(tool, tmp_path, capsys):
    f = _vg_fixture(tmp_path)
    assert tool.main(["--file", f, "--format", "vg"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    for expected in [
        "annotations[1] (id 2, image 0): bad box: bbox has non-finite",
        "annotations[2] (id 3, image 0): bad box: bbox has non-positive width or height",
        "annotations[3] (id 4, image 0): empty caption",
        "annotations[4]: missing field: missing field(s) ['caption']",
        "images[4] (id 4): bad image entry: missing field(s) ['height']",
        "1.jpg: image 1: bad image: OSError",
        "missing.jpg: image 3: bad image: image file does not exist",
        "2.jpg: image 2: bad image: image is 60x40 but the annotation says 61x40",
    ]:
        assert expected in out, expected
    assert "8 skipped or invalid" in out


def test_clean_file_passes(tool, tmp_path, capsys):
    f = _vg_fixture(tmp_path, broken=False)
    assert tool.main(["--file", f, "--format", "vg"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")


def test_ln_one_point_trace_and_empty_caption(tool, tmp_path, capsys):
    write_image(tmp_path / "000000000001.jpg", np.zeros((8, 8, 3)))
    good = {"image_id": "1", "caption": "a b", "timed_caption": [{"utterance": "a b", "start_time": 0, "end_time": 1}],
            "traces": [[{"x": 0.1, "y": 0.1, "t": 0}, {"x": 0.2, "y": 0.2, "t": 1}]]}
    lines = [good, dict(good, traces=[[{"x": 0.1, "y": 0.1, "t": 0}]]), dict(good, caption="")]
    f = tmp_path / "ln.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines))
    assert tool.main(["--file", str(f), "--format", "ln"]) == 1
    out = capsys.readouterr().out
    assert "line 2 (image 1, annotator None): short trace: trace has 1 point(s)" in out
    assert "line 3 (image 1, annotator None): empty caption" in out


def test_registered_dataset_and_missing_file(tool, shapes_root, capsys):
    assert tool.main(["--dataset", "shapes_refcoco_val"]) == 0
    assert tool.main(["--dataset", "shapes_ln_val", "--no-images"]) == 0
    capsys.readouterr()
    write_json(os.path.join(shapes_root, "x", "placeholder.json"), {})
    assert tool.main(["--file", os.path.join(shapes_root, "nope.json"), "--format", "coco_captions"]) == 1
    assert "file does not exist" in capsys.readouterr().out
