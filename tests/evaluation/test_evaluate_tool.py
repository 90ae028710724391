"""tools/evaluate.py: a run's predictions.json scores identically; box formats, frames, bootstrap, errors. On the
real Visual Genome sample when present, else on synthetic regions of the same layout."""
import copy
import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from pixelllm_d2.evaluation import DenseCapEvaluator
from pixelllm_d2.structures import BoxMode

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VG_SAMPLE = os.path.join(REPO_ROOT, "..", "shared", "data", "vg_sample")

_spec = importlib.util.spec_from_file_location("evaluate_tool", os.path.join(REPO_ROOT, "tools", "evaluate.py"))
evaluate_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_tool)


def vg_regions():
    """(image_data, {image_id: regions}) in Visual Genome's native layout: the real sample, or synthetic regions."""
    if os.path.isdir(VG_SAMPLE):
        with open(os.path.join(VG_SAMPLE, "image_data.json")) as f:
            images = json.load(f)
        with open(os.path.join(VG_SAMPLE, "region_descriptions.json")) as f:
            return images, {entry["id"]: entry["regions"] for entry in json.load(f)}
    rng = random.Random(0)
    images = [{"image_id": i, "width": 800, "height": 600} for i in (1, 2)]
    words = "green clock red car white sign tall tree black dog".split()
    regions = {i: [{"region_id": 1000 * i + k, "image_id": i, "x": rng.randint(0, 500), "y": rng.randint(0, 350),
                    "width": rng.randint(10, 299), "height": rng.randint(10, 249),
                    "phrase": f"{rng.choice(words)} {rng.choice(words)}"} for k in range(20)] for i in (1, 2)}
    return images, regions


def vg_sample():
    """(dataset dicts as docs/DESIGN.md §1, the GRiT-style json) of the VG regions."""
    images, regions = vg_regions()
    dicts, annotations = [], []
    for img in images:
        anns = []
        for r in regions[img["image_id"]]:
            xywh = [r["x"], r["y"], r["width"], r["height"]]
            anns.append({"bbox": BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS),
                         "bbox_mode": BoxMode.XYXY_ABS, "caption": r["phrase"], "id": r["region_id"]})
            annotations.append({"id": r["region_id"], "image_id": img["image_id"], "bbox": xywh, "caption": r["phrase"],
                                "category_id": 1})
        dicts.append({"file_name": os.path.join(VG_SAMPLE, "images", f"{img['image_id']}.jpg"),
                      "image_id": img["image_id"], "height": img["height"], "width": img["width"], "annotations": anns})
    grit = {"images": [{"id": d["image_id"], "height": d["height"], "width": d["width"],
                        "file_name": os.path.basename(d["file_name"])} for d in dicts],
            "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    return dicts, grit


def fake_densecap_outputs(dicts, seed=0):
    """Model outputs (docs/DESIGN.md §3) near the GT: jittered boxes, right or wrong captions, float32 tensors."""
    rng = random.Random(seed)
    batches = []
    for d in dicts:
        boxes, captions = [], []
        for ann in d["annotations"]:
            x0, y0, x1, y1 = ann["bbox"]
            j = 0.15 * max(x1 - x0, y1 - y0)
            nx0, ny0 = max(0.0, x0 + rng.uniform(-j, j)), max(0.0, y0 + rng.uniform(-j, j))
            boxes.append([nx0, ny0, max(nx0 + 1, min(d["width"], x1 + rng.uniform(-j, j))),
                          max(ny0 + 1, min(d["height"], y1 + rng.uniform(-j, j)))])
            captions.append(ann["caption"] if rng.random() < 0.6 else rng.choice(d["annotations"])["caption"])
        boxes = torch.tensor(boxes, dtype=torch.float32)
        scores = torch.rand(len(boxes), generator=torch.Generator().manual_seed(seed))
        out = {"task": "densecap", "pred_boxes": boxes, "scores": scores,
               "captions": captions, "words": [c.split() for c in captions],
               "word_boxes": [boxes[i].repeat(len(c.split()), 1) for i, c in enumerate(captions)]}
        inp = {"image_id": d["image_id"], "height": d["height"], "width": d["width"], "task": "densecap",
               "image": torch.zeros(3, 288, 384, dtype=torch.uint8)}
        batches.append(([inp], [out]))
    return batches


@pytest.fixture(scope="module")
def vg_run(tmp_path_factory):
    """An eval-only densecap run on the VG sample (fake model outputs), and the GRiT json of the same data."""
    dicts, grit = vg_sample()
    out_dir = tmp_path_factory.mktemp("vg_run")
    grit_path = out_dir / "vg_sample_grit.json"
    grit_path.write_text(json.dumps(grit))
    return dicts, out_dir, grit_path


def test_eval_only_predictions_score_identically_through_the_tool(vg_run, shared_meteor, tmp_path):
    dicts, out_dir, grit_path = vg_run
    evaluator = DenseCapEvaluator("vg_sample", dataset_dicts=dicts, output_dir=str(out_dir))
    for inputs, outputs in fake_densecap_outputs(dicts):
        evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    assert 0.1 < results["mAP_detection"] < 1 and 0 < results["mAP"] < results["mAP_detection"]
    assert json.loads((out_dir / "results.json").read_text()) == results

    records = json.loads((out_dir / "predictions.json").read_text())
    assert len(records) == sum(len(d["annotations"]) for d in dicts)
    assert all(r["bbox_mode"] == "XYWH_ABS" for r in records)
    assert {"image_id", "bbox", "score", "caption", "words", "word_boxes"} <= set(records[0])

    pred = str(out_dir / "predictions.json")
    for gt in (str(out_dir / "groundtruth.json"), str(grit_path)):  # the run's ground truth and the dataset's own
        out = tmp_path / "tool_results.json"
        assert evaluate_tool.main(["--task", "densecap", "--gt", gt, "--pred", pred, "--out", str(out)]) == results
        assert json.loads(out.read_text()) == results


def _rewrite(records, fmt, scale=1.0):
    """The records as another system would write them: boxes in `fmt`, no bbox_mode, optionally rescaled."""
    out = []
    for rec in records:
        rec = copy.deepcopy(rec)
        del rec["bbox_mode"]
        box = BoxMode.convert(rec["bbox"], BoxMode.XYWH_ABS, {"xyxy": BoxMode.XYXY_ABS, "cxcywh": BoxMode.CXCYWH_ABS,
                                                              "xywh": BoxMode.XYWH_ABS}[fmt])
        rec["bbox"] = [v * scale for v in box]
        rec.pop("word_boxes")
        out.append(rec)
    return out


def test_box_formats_and_frames(vg_run, tmp_path):
    _, out_dir, grit_path = vg_run
    records = json.loads((out_dir / "predictions.json").read_text())
    args = ["--task", "densecap", "--gt", str(grit_path), "--skip-meteor"]
    base = evaluate_tool.main(args + ["--pred", str(out_dir / "predictions.json")])
    assert "mAP" not in base
    frames = [("xyxy", 1.0, []), ("cxcywh", 1.0, []), ("xywh", 720 / 800, ["--pred-longest-side", "720"])]
    for fmt, scale, extra in frames:
        path = tmp_path / f"{fmt}.json"
        path.write_text(json.dumps(_rewrite(records, fmt, scale)))
        results = evaluate_tool.main(args + ["--pred", str(path), "--box-format", fmt] + extra)
        assert results == pytest.approx(base, abs=1e-9), fmt
    # The classic mistake: (center x, center y, w, h) read as (x, y, w, h).
    path = tmp_path / "cxcywh.json"
    wrong = evaluate_tool.main(args + ["--pred", str(path), "--box-format", "xywh"])
    assert wrong["mAP_detection"] < base["mAP_detection"] / 2
    with pytest.raises(ValueError, match="does not state its box format.*--box-format"):
        evaluate_tool.main(args + ["--pred", str(path)])
    with pytest.raises(ValueError, match="says bbox_mode XYWH_ABS but --box-format xyxy"):
        evaluate_tool.main(args + ["--pred", str(out_dir / "predictions.json"), "--box-format", "xyxy"])


def test_bootstrap_reports_mean_and_std(vg_run, tmp_path):
    _, out_dir, grit_path = vg_run
    argv = ["--task", "densecap", "--gt", str(grit_path), "--pred", str(out_dir / "predictions.json"), "--skip-meteor",
            "--repeats", "4", "--seed", "7"]
    a, b = evaluate_tool.main(argv), evaluate_tool.main(argv)
    assert a == b and a["bootstrap_repeats"] == 4 and a["bootstrap_seed"] == 7
    assert a["mAP_detection_boot_std"] > 0 and 0 < a["mAP_detection_boot_mean"] < 1


def test_command_line_error_names_the_file_without_a_traceback(vg_run, tmp_path):
    _, _, grit_path = vg_run
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 12345, "bbox": [0, 0, 1, 1], "bbox_mode": "XYWH_ABS", "score": 1.0,
                                "caption": "x"}]))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "evaluate.py"), "--task", "densecap",
           "--gt", str(grit_path), "--pred", str(bad), "--skip-meteor"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2  # bad input, as argparse's usage errors
    assert f"evaluate.py: error: {bad}: record 0: image_id 12345 is not in the ground truth" in proc.stderr
    assert "Traceback" not in proc.stderr
