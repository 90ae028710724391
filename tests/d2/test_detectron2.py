"""PixelLLM inside detectron2: config, build_model, inputs / Instances, DefaultPredictor, Visualizer, catalogs,
evaluators, and detectron2's trainer (kill + resume). Skipped where detectron2 is not installed (it has no wheel
on the package registry; CI does not have it). To run: detectron2's package on PYTHONPATH with omegaconf,
hydra-core and cloudpickle, e.g. `PYTHONPATH=/tmp/d2:/tmp/d2deps pytest tests/d2 -p no:hydra_pytest`."""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

detectron2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (no wheel on the registry)")

from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog as D2DatasetCatalog  # noqa: E402
from detectron2.data import MetadataCatalog as D2MetadataCatalog  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, inference_on_dataset, print_csv_format  # noqa: E402
from detectron2.modeling import build_model as d2_build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

import pixelllm_d2.d2 as pd2  # noqa: E402
from pixelllm_d2.config import get_cfg  # noqa: E402
from pixelllm_d2.data import DatasetCatalog, build_test_loader, register_all_shapes  # noqa: E402
from pixelllm_d2.data.datasets.shapes import ensure_shapes  # noqa: E402
from pixelllm_d2.modeling import build_model  # noqa: E402
from pixelllm_d2.predictor import PixelLLMPredictor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny", "pixelllm_tiny.yaml")
SHAPES = os.path.join(ROOT, "configs", "shapes", "pixelllm_tiny_shapes.yaml")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def d2_cfg(path=TINY, *opts):
    cfg = d2_get_cfg()
    pd2.add_pixelllm_config(cfg)
    cfg.merge_from_file(path, allow_unsafe=False)
    cfg.merge_from_list(list(opts))
    return cfg


def _leaves(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + k + ".")
        else:
            yield prefix + k, v


# ------------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_our_yamls_merge_unchanged(path):
    ours = get_cfg()
    ours.merge_from_file(path)
    theirs = dict(_leaves(d2_cfg(path)))
    for key, value in _leaves(ours):
        if key in ("MODEL.DEVICE",):
            continue
        assert theirs[key] == value, key
    assert theirs["VERSION"] == 2 and theirs["INPUT.MIN_SIZE_TEST"] == 0
    assert theirs["MODEL.DEVICE"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_shared_keys_are_the_documented_ones():
    d2 = dict(_leaves(d2_get_cfg()))
    ours = dict(_leaves(get_cfg()))
    same = lambda a, b: list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b  # noqa: E731
    assert {k for k in set(d2) & set(ours) if not same(d2[k], ours[k])} == set(pd2.SHARED_KEYS)
    cfg = d2_get_cfg()
    pd2.add_pixelllm_config(cfg)
    assert cfg.DATALOADER.ASPECT_RATIO_GROUPING is False and cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]


# ------------------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("path", [TINY, os.path.join(ROOT, "configs", "Base-PixelLLM.yaml")], ids=["tiny", "paper"])
def test_build_model_gives_our_model(path):
    cfg = d2_cfg(path, "MODEL.DEVICE", "meta")
    with torch.device("meta"):
        model = d2_build_model(cfg)
    ours_cfg = get_cfg()
    ours_cfg.merge_from_file(path)
    ours = build_model(ours_cfg, device="meta")
    assert isinstance(model, pd2.D2PixelLLM)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ours.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(p.numel() for p in ours.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A d2-built tiny model, our predictor with the same weights, and that checkpoint's path."""
    torch.manual_seed(0)
    cfg = d2_cfg(TINY, "MODEL.MASK_ON", True)
    model = d2_build_model(cfg).eval()
    path = str(tmp_path_factory.mktemp("weights") / "model_final.pth")
    torch.save({"model": model.state_dict()}, path)
    ours = get_cfg()
    ours.merge_from_file(TINY)
    ours.merge_from_list(["MODEL.MASK_ON", True, "MODEL.WEIGHTS", path])
    return cfg, model, PixelLLMPredictor(ours), path


def _image(seed=0, hw=(60, 80)):
    return np.random.default_rng(seed).integers(0, 255, hw + (3,), dtype=np.uint8)


def test_detectron2_inputs_give_instances_in_original_pixels(tiny):
    cfg, model, predictor, _ = tiny
    rgb = _image()
    image = torch.as_tensor(rgb.transpose(2, 0, 1).astype("float32"))  # detectron2 style: float CHW in INPUT.FORMAT
    (out,) = model([{"image": image, "height": 60, "width": 80, "task": "refer", "text": ["the red circle", "a square"]}])
    inst = out["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (60, 80) and len(inst) == 2
    assert isinstance(inst.pred_boxes, Boxes) and inst.pred_masks.shape == (2, 60, 80)
    ref = predictor(rgb, task="refer", text=["the red circle", "a square"])
    assert torch.equal(inst.pred_boxes.tensor, ref["pred_boxes"])  # the predictor's inputs, the same weights
    assert list(inst.pred_object_descriptions) == ref["captions"]
    assert inst[inst.scores > -1].pred_object_descriptions[1] == "a square"  # indexable like a tensor field
    (cap,) = model([{"image": image, "height": 60, "width": 80}])
    assert cap["task"] == "caption" and len(cap["instances"]) == 1
    assert cap["instances"].pred_word_points[0].shape == (len(cap["instances"].pred_words[0]), 2)
    # a detectron2 mapper may have resized the image: outputs stay in the original (height, width) frame
    small = torch.nn.functional.interpolate(image[None], size=(30, 40), mode="bilinear")[0]
    (region,) = model([{"image": small, "height": 60, "width": 80, "task": "region", "boxes": [[10, 10, 50, 40]]}])
    assert torch.allclose(region["instances"].pred_boxes.tensor, torch.tensor([[10.0, 10.0, 50.0, 40.0]]), atol=1.0)


def test_default_predictor_and_visualizer(tiny):
    cfg, model, _, path = tiny
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = path
    bgr = _image(1)[:, :, ::-1].copy()
    out = DefaultPredictor(cfg)(bgr)
    inst = out["instances"]
    assert len(inst) == 1 and isinstance(inst.pred_object_descriptions[0], str)
    assert torch.equal(inst.pred_boxes.tensor, torch.tensor([[0.0, 0.0, 80.0, 60.0]]))  # caption: the whole image
    picture = Visualizer(bgr[:, :, ::-1]).draw_instance_predictions(inst).get_image()
    assert picture.shape == (60, 80, 3)
    labelled = pd2.CaptionVisualizer(bgr[:, :, ::-1]).draw_instance_predictions(inst).get_image()
    assert labelled.shape == (60, 80, 3) and not np.array_equal(labelled, bgr[:, :, ::-1])


# ------------------------------------------------------------------------------------------ catalogs, evaluators
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    register_all_shapes(root, 8, 4)
    pd2.register_in_detectron2()
    yield root
    register_all_shapes()
    pd2.register_in_detectron2()


def test_datasets_are_in_detectron2s_catalogs(shapes):
    assert D2DatasetCatalog.get("shapes_refcoco_val") == DatasetCatalog.get("shapes_refcoco_val")
    meta = D2MetadataCatalog.get("shapes_refcoco_val")
    assert (meta.task, meta.evaluator_type) == ("refer", "refer")
    assert "vg_train" in D2DatasetCatalog.list() and D2MetadataCatalog.get("vg_test").evaluator_type == "densecap"


def test_evaluators_work_with_detectron2s_inference(shapes, tiny, tmp_path, caplog):
    cfg, model, _, _ = tiny
    cfg = cfg.clone()
    cfg.merge_from_list(["TEST.SKIP_METEOR", True, "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path)])
    results = {}
    for name in ("shapes_refcoco_val", "shapes_vg_loca_val"):
        evaluator = pd2.PixelLLMD2Trainer.build_evaluator(cfg, name)
        assert isinstance(evaluator, DatasetEvaluator)
        results.update(inference_on_dataset(model, build_test_loader(cfg, name), DatasetEvaluators([evaluator])))
    assert set(results) == {"shapes_refcoco_val", "shapes_vg_loca_val"}
    assert 0 <= results["shapes_refcoco_val"]["P@0.5"] <= 1 and "mask_cIoU" in results["shapes_refcoco_val"]
    assert os.path.isfile(tmp_path / "inference" / "shapes_refcoco_val" / "results.json")
    print_csv_format(results)


# ---------------------------------------------------------------------------------------------------- trainer
NUM_TRAIN, NUM_VAL, MAX_ITER, PERIOD = 16, 4, 20, 5


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("trainer_data"))
    ensure_shapes(root, NUM_TRAIN, NUM_VAL)
    return root


def _env(data_root):
    d2_path = os.path.dirname(os.path.dirname(detectron2.__file__))
    deps = [p for p in sys.path if p and os.path.isdir(os.path.join(p, "omegaconf"))]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, d2_path, *deps]), OMP_NUM_THREADS="1",
                PIXELLLM_DATASETS=data_root, PIXELLLM_SHAPES_NUM_TRAIN=str(NUM_TRAIN), PIXELLLM_SHAPES_NUM_VAL=str(NUM_VAL))


def _cmd(out, *extra):
    return [sys.executable, os.path.join(ROOT, "tools", "train_net_detectron2.py"), "--config-file", SHAPES,
            "--num-gpus", "2", "--dist-url", "auto", *extra, "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD",
            str(PERIOD), "SOLVER.WARMUP_ITERS", "2", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.LOG_PERIOD", "1", "DETERMINISTIC",
            "True", "DATASETS.TEST", "()", "SEED", "0", "OUTPUT_DIR", out]


def test_detectron2_trainer_two_processes_killed_and_resumed_equals_uninterrupted(data_root, tmp_path):
    env = _env(data_root)
    ref = str(tmp_path / "reference")
    p = subprocess.run(_cmd(ref), env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = str(tmp_path / "killed")
    proc = subprocess.Popen(_cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = os.path.join(out, f"model_{PERIOD - 1:07d}.pth")
    deadline = time.time() + 300
    while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 1.5))
    assert proc.poll() is None, "the run ended before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    p = subprocess.run(_cmd(out, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    a = torch.load(os.path.join(ref, "model_final.pth"), weights_only=True)
    b = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    differing = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert differing == [] and len(a["model"]) > 100
    with open(os.path.join(ref, "last_checkpoint")) as f:
        assert f.read() == "model_final.pth"
    losses = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert losses[-1]["iteration"] == MAX_ITER - 1


def test_pickle_checkpoints_are_refused(tmp_path):
    path = str(tmp_path / "model.pkl")
    with open(path, "wb") as f:
        f.write(b"not read")
    with pytest.raises(ValueError, match="a pickle file; refused"):
        pd2.D2Checkpointer(torch.nn.Linear(2, 2)).load(path)
