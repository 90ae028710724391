import glob
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from pixelllm_d2.structures import box_iou
from pixelllm_d2.utils.visualizer import Visualizer

from ..conftest import REPO_ROOT
from ..images import draw_shapes_scene, expected_marker_colors, one_cpu_thread, save_photos

pytestmark = pytest.mark.usefixtures(one_cpu_thread.__name__)

TINY = os.path.join(REPO_ROOT, "configs", "tiny", "pixelllm_tiny.yaml")
SHAPES_CFG = os.path.join(REPO_ROOT, "configs", "shapes", "pixelllm_tiny_shapes.yaml")
SHAPES_OUT = os.path.join(REPO_ROOT, "output", "pixelllm_tiny_shapes")


def _load_demo():
    spec = importlib.util.spec_from_file_location("pixelllm_demo", os.path.join(REPO_ROOT, "tools", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Real photos (astronaut 512x512 png, coffee 600x400 jpg, chelsea 451x300 png) and a drawn scene."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = save_photos(str(folder))
    scene, objects = draw_shapes_scene()
    paths["scene"] = str(folder / "scene.png")
    Image.fromarray(scene).save(paths["scene"])
    return paths


def run_demo(capsys, *args, config=TINY):
    torch.manual_seed(0)
    rc = demo.main(["--config-file", config, "--cpu", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _read(folder, stem):
    with open(os.path.join(folder, f"{stem}.json")) as f:
        return json.load(f)


def _inside(xy, W, H):
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return bool(((xy >= 0) & (xy <= [W, H])).all())


def check_record(rec, path, task, n_results):
    """The JSON fields of the issue, their types, and every point and box inside the image."""
    W, H = Image.open(path).size
    assert rec["image"] == path and (rec["width"], rec["height"], rec["task"]) == (W, H, task)
    assert len(rec["results"]) == n_results
    for r in rec["results"]:
        assert isinstance(r["score"], float) and isinstance(r["caption"], str)
        if "box" in r:
            assert len(r["box"]) == 4 and all(isinstance(v, float) for v in r["box"])
            assert r["box"][0] <= r["box"][2] and r["box"][1] <= r["box"][3] and _inside(r["box"], W, H)
        assert isinstance(r["words"], list)
        for w in r["words"]:
            assert set(w) == {"word", "point", "box"} and isinstance(w["word"], str) and w["word"]
            assert len(w["point"]) == 2 and len(w["box"]) == 4
            assert _inside(w["point"], W, H) and _inside(w["box"], W, H)


TASK_ARGS = {
    "caption": [],
    "region-box": ["--task", "region", "--box", "10", "20", "180", "150", "--box", "0", "0", "60.5", "40"],
    "region-points": ["--task", "region", "--point", "100", "120", "--point", "140", "150"],
    "refer": ["--task", "refer", "--text", "the red circle", "--text", "the blue square"],
}


@pytest.mark.parametrize("name", list(TASK_ARGS))
def test_every_task_on_photos_and_a_scene(capsys, tmp_path, inputs, name):
    rc, out, err = run_demo(capsys, "--input", *inputs.values(), "--output", str(tmp_path), *TASK_ARGS[name])
    assert rc == 0, err
    task = name.split("-")[0]
    n = {"caption": 1, "region-box": 2, "region-points": 1, "refer": 2}[name]
    for stem, path in inputs.items():
        rec = _read(tmp_path, stem)
        check_record(rec, path, task, n)
        picture = cv2.imread(str(tmp_path / f"{stem}.png"))
        W, H = rec["width"], rec["height"]
        assert picture.shape[1] == round(W * max(1.0, 512 / max(W, H)))  # the picture keeps the image frame
        assert f"{stem}: {W}x{H} {task}" in out
        if name == "caption":
            assert all(len(r["words"]) >= 1 for r in rec["results"])
            assert rec["results"][0]["box"] == [0.0, 0.0, float(W), float(H)]
        if name == "region-box":
            np.testing.assert_allclose([r["box"] for r in rec["results"]], [[10, 20, 180, 150], [0, 0, 60.5, 40]], atol=0.02)
        if name == "region-points":
            assert rec["results"][0]["points"] == [[100.0, 120.0], [140.0, 150.0]] and "box" not in rec["results"][0]
        if name == "refer":
            assert [r["caption"] for r in rec["results"]] == ["the red circle", "the blue square"]
            assert [[w["word"] for w in r["words"]] for r in rec["results"]] == [["the", "red", "circle"], ["the", "blue", "square"]]
            for r in rec["results"]:
                assert isinstance(r["mask_rle"]["counts"], str) and r["mask_rle"]["size"] == [H, W]
                assert mask_utils.decode(r["mask_rle"]).shape == (H, W)
                assert isinstance(r["mask_score"], float)
    assert f"done: {len(inputs)} of {len(inputs)} input(s) processed, 0 failed" in out


def test_picture_puts_each_word_marker_at_its_point(capsys, tmp_path, inputs):
    rc, _, err = run_demo(capsys, "--input", inputs["chelsea"], inputs["scene"], "--output", str(tmp_path))
    assert rc == 0, err
    for stem in ("chelsea", "scene"):
        rec = _read(tmp_path, stem)
        words = rec["results"][0]["words"]
        picture = cv2.imread(str(tmp_path / f"{stem}.png"))[:, :, ::-1]
        vis = Visualizer(np.zeros((rec["height"], rec["width"], 3), np.uint8))  # the demo's scale and marker size
        pts = [w["point"] for w in words]
        expected = expected_marker_colors(pts, vis.scale, vis.radius)
        checked = 0
        for (x, y), color in zip(np.round(np.asarray(pts) * vis.scale).astype(int), expected):
            if color is not None:
                assert tuple(picture[y, x]) == color
                checked += 1
        assert checked >= 1


def test_bad_inputs_are_reported_and_the_others_processed(capsys, tmp_path, inputs):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    missing = tmp_path / "missing.png"
    out_dir = tmp_path / "out"
    rc, out, err = run_demo(capsys, "--input", str(missing), inputs["astronaut"], str(broken), inputs["scene"], "--output", str(out_dir))
    assert rc == 1
    assert f"error: {missing}: cannot read image: file does not exist" in err
    assert f"error: {broken}: cannot read image: UnidentifiedImageError" in err
    assert sorted(os.listdir(out_dir)) == ["astronaut.json", "astronaut.png", "scene.json", "scene.png"]
    assert "done: 2 of 4 input(s) processed, 2 failed" in out


def test_box_outside_one_image_fails_only_that_image(capsys, tmp_path, inputs):
    # chelsea is 451x300: the box leaves it; astronaut (512x512) contains it.
    rc, out, err = run_demo(capsys, "--input", inputs["chelsea"], inputs["astronaut"], "--output", str(tmp_path), "--task", "region", "--box", "100", "250", "400", "350")
    assert rc == 1
    assert f"error: {inputs['chelsea']}: boxes (XYXY, original-image pixels): boxes outside the 451x300 image" in err
    assert os.path.isfile(tmp_path / "astronaut.json") and not os.path.exists(tmp_path / "chelsea.json")


def test_reversed_box_and_empty_text_fail_every_input(capsys, tmp_path, inputs):
    rc, out, err = run_demo(capsys, "--input", inputs["scene"], inputs["coffee"], "--output", str(tmp_path), "--task", "region", "--box", "50", "10", "20", "40")
    assert rc == 1 and err.count("x1 < x0") == 2 and "done: 0 of 2" in out
    rc, out, err = run_demo(capsys, "--input", inputs["scene"], "--output", str(tmp_path), "--task", "refer", "--text", "  ")
    assert rc == 1 and f"error: {inputs['scene']}: empty referring expression '  '" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "region", "--box", "1", "2", "3"], "--box X0 Y0 X1 Y1 expects 4 numbers, got 3: 1 2 3"),
        (["--task", "region", "--box", "1", "2", "3", "4", "5"], "expects 4 numbers, got 5"),
        (["--task", "region", "--box", "1", "2", "x", "4"], "--box X0 Y0 X1 Y1 expects numbers, got: 1 2 x 4"),
        (["--task", "region", "--point", "1"], "--point X Y expects 2 numbers, got 1"),
        (["--task", "region"], "--task region needs --box"),
        (["--task", "refer"], "--task refer needs --text"),
        (["--task", "caption", "--box", "1", "2", "3", "4"], "--box / --point are prompts of --task region"),
        (["--task", "caption", "--text", "hello"], "--text is the expression of --task refer"),
        (["--task", "trace"], "invalid choice: 'trace'"),
        (["--opts", "MODEL.DEVICE"], "--opts needs KEY VALUE pairs"),
    ],
)
def test_malformed_command_lines_exit_2(capsys, inputs, args, message):
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", TINY, "--input", inputs["scene"], *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_densecap_reports_the_missing_head(capsys, tmp_path, inputs):
    rc, out, err = run_demo(capsys, "--input", inputs["scene"], inputs["chelsea"], "--output", str(tmp_path), "--task", "densecap")
    assert rc == 1 and err.count("model: a 'densecap' input reached a model built without MODEL.DENSECAP_ON") == 2


def test_folders_and_globs(capsys, tmp_path, inputs):
    folder = os.path.dirname(inputs["scene"])
    other = tmp_path / "other"
    other.mkdir()
    Image.open(inputs["scene"]).save(other / "scene.png")  # same stem as an input of the folder
    empty = tmp_path / "empty"
    empty.mkdir()
    out_dir = tmp_path / "out"
    pattern = str(other / "*.png")
    rc, out, err = run_demo(capsys, "--input", folder, pattern, str(tmp_path / "nothing*.jpg"), str(empty), "--output", str(out_dir))
    assert rc == 1
    assert f"error: {tmp_path / 'nothing*.jpg'}: no file matches this pattern" in err and f"error: {empty}: folder has no images" in err
    stems = sorted(f[:-5] for f in os.listdir(out_dir) if f.endswith(".json"))
    assert stems == ["astronaut", "chelsea", "coffee", "scene", "scene_1"]
    assert _read(out_dir, "scene_1")["image"] == str(other / "scene.png")
    assert "done: 5 of 7 input(s) processed, 2 failed" in out


def test_default_weights_are_the_output_dirs_final_checkpoint(tmp_path):
    from pixelllm_d2.config import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    assert demo.default_weights(cfg) == ""
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert demo.default_weights(cfg) == str(tmp_path / "model_final.pth")
    os.utime(tmp_path / "model_final.pth", (1, 1))
    (tmp_path / "model_final.safetensors").write_bytes(b"")
    assert demo.default_weights(cfg) == str(tmp_path / "model_final.safetensors")  # the newest
    cfg.MODEL.WEIGHTS = "given.pth"
    assert demo.default_weights(cfg) == "given.pth"


def test_missing_config_file_is_reported(capsys, inputs):
    rc = demo.main(["--config-file", "no/such.yaml", "--input", inputs["scene"]])
    assert rc == 2 and "config file not found: no/such.yaml" in capsys.readouterr().err


def test_command_line_entry_point(tmp_path, inputs):
    # The script as users run it: exit status, opts, the summary; a missing input does not stop the others.
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "demo.py"), "--config-file", TINY, "--input", inputs["coffee"], str(tmp_path / "gone.jpg"),
           "--output", str(tmp_path), "--cpu", "--opts", "MODEL.PIXELLLM.DECODE.MAX_LEN", "3"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 1, res.stderr
    assert "gone.jpg: cannot read image: file does not exist" in res.stderr and "done: 1 of 2 input(s) processed, 1 failed" in res.stdout
    rec = _read(tmp_path, "coffee")
    assert 1 <= len(rec["results"][0]["words"]) <= 3  # default MAX_LEN 8: longer


def _trained_checkpoint():
    found = [p for p in glob.glob(os.path.join(SHAPES_OUT, "model_final.*")) if p.endswith((".pth", ".safetensors"))]
    if not (os.path.isfile(SHAPES_CFG) and found):
        pytest.skip(f"trained embedded-benchmark checkpoint not present ({SHAPES_CFG}, {SHAPES_OUT}/model_final.*)")


@pytest.mark.parametrize("target", ["red circle", "blue square", "green triangle"])
def test_trained_model_refers_to_the_right_shape(capsys, tmp_path, target):
    _trained_checkpoint()
    scene, objects = draw_shapes_scene()
    path = str(tmp_path / "scene.png")
    Image.fromarray(scene).save(path)
    # Default config and weights: exactly the README's `tools/demo.py --input ...`.
    rc = demo.main(["--input", path, "--output", str(tmp_path), "--task", "refer", "--text", f"the {target}"])
    assert rc == 0, capsys.readouterr().err
    box = _read(tmp_path, "scene")["results"][0]["box"]
    iou = float(box_iou(torch.tensor([box]), torch.tensor([objects[target]["box"]]))[0, 0])
    assert iou > 0.5, f"'the {target}': predicted {box}, drawn {objects[target]['box']}, IoU {iou:.2f}"


def test_trained_predictor_gives_the_boxes_of_the_evaluation():
    """PixelLLMPredictor on a dataset image gives the box evaluation wrote to predictions.json for the same
    sent_id: both build their inputs on one path (data/inputs.py)."""
    _trained_checkpoint()
    pred_file = os.path.join(SHAPES_OUT, "inference", "shapes_refcoco_val", "predictions.json")
    if not os.path.isfile(pred_file):
        pytest.skip(f"{pred_file} not present (written by the README's training command)")
    from pixelllm_d2.config import get_cfg
    from pixelllm_d2.data import DatasetCatalog
    from pixelllm_d2.predictor import PixelLLMPredictor

    with open(pred_file) as f:
        evaluated = {r["sent_id"]: r["bbox"] for r in json.load(f)}
    cfg = get_cfg()
    cfg.merge_from_file(SHAPES_CFG)
    cfg.MODEL.WEIGHTS = demo.default_weights(cfg)
    cfg.OUTPUT_DIR = SHAPES_OUT
    predictor = PixelLLMPredictor(cfg)
    worst, n = 0.0, 0
    for d in DatasetCatalog.get("shapes_refcoco_val"):
        texts = [s for a in d["annotations"] for s in a["sentences"]]
        sent_ids = [i for a in d["annotations"] for i in a["sent_ids"]]
        out = predictor(d["file_name"], task="refer", text=texts)
        for sid, box in zip(sent_ids, out["pred_boxes"].tolist()):
            x, y, w, h = evaluated[sid]
            worst = max(worst, max(abs(a - b) for a, b in zip(box, [x, y, x + w, y + h])))
            n += 1
    print(f"largest difference {worst:.4f} px over {n} expressions")
    assert n == len(evaluated) and worst <= 1.0, f"largest difference {worst:.3f} px over {n} expressions"
