"""One input path: the predictor's model inputs equal the test mapper's, tensor for tensor, for every task the
predictor offers; and a task added to the task table alone reaches the mapper, the model and the evaluator."""
import os

import numpy as np
import pytest
import torch

from pixelllm_d2.config import get_cfg
from pixelllm_d2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from pixelllm_d2.data.datasets import register_vg_json
from pixelllm_d2.evaluation import LocaEvaluator, build_evaluator
from pixelllm_d2.modeling import build_model
from pixelllm_d2.predictor import PixelLLMPredictor
from pixelllm_d2.tasks import TASKS, Task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny", "pixelllm_tiny.yaml")
# What the model reads of an input at inference (the rest is ground truth and bookkeeping for evaluators).
MODEL_READS = ("image", "height", "width", "task", "prompt_boxes", "prompt_points", "prompt_point_labels",
               "context_ids", "target_ids")


def _tiny_cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(["DATALOADER.NUM_WORKERS", 0, "TEST.SKIP_METEOR", True, *opts])
    return cfg


@pytest.fixture(scope="module")
def predictors():
    torch.manual_seed(0)
    cfg = _tiny_cfg()
    return cfg, {prompt: PixelLLMPredictor(cfg, caption_prompt=prompt) for prompt in ("trace", "caption")}


# dataset of the shapes benchmark -> (predictor task, prompts from the dataset dict, the predictor's caption prompt)
CASES = {
    "shapes_captions_val": ("caption", lambda d: {}, "caption"),
    "shapes_vg_loca_val": ("region", lambda d: {"boxes": [a["bbox"] for a in d["annotations"]]}, "trace"),
    "shapes_refcoco_val": ("refer", lambda d: {"text": [s for a in d["annotations"] for s in a["sentences"]]}, "trace"),
    "shapes_vg_val": ("densecap", lambda d: {}, "trace"),
}


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_predictor_inputs_equal_the_test_mappers(shapes_root, predictors, dataset):
    cfg, by_prompt = predictors
    task, prompts, caption_prompt = CASES[dataset]
    mapper = DatasetMapper(cfg, is_train=False, task=MetadataCatalog.get(dataset).task)
    for d in DatasetCatalog.get(dataset)[:3]:
        expected = mapper(d)
        got = by_prompt[caption_prompt].prepare(d["file_name"], task, **prompts(d))
        keys = [k for k in MODEL_READS if k in expected]
        assert keys == [k for k in MODEL_READS if k in got], (d["file_name"], keys)
        for k in keys:
            a, b = expected[k], got[k]
            if isinstance(a, torch.Tensor):
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (d["file_name"], k)
            else:
                assert a == b, (d["file_name"], k)
    # trace is a training / evaluation task (its input is the dataset's narrative); the predictor does not offer it


def test_a_task_added_to_the_table_reaches_mapper_model_and_evaluator(shapes_root, monkeypatch):
    # Caption given boxes with the region prompt, trained without per-token locations: a new combination of
    # existing kinds, declared in one place.
    new = Task("box_caption", queries="regions", prompt="REGION", prompt_box="query", context_text=False, text_loss=True,
               text_at_test="generated", token_targets="none", box_at_last_word=False, evaluator="loca", predictor=True,
               augmentation="REGION")
    monkeypatch.setitem(TASKS, new.name, new)
    meta = MetadataCatalog.get("shapes_vg_val")
    register_vg_json("shapes_box_caption_val", meta.json_file, meta.image_root, task="box_caption")
    try:
        assert MetadataCatalog.get("shapes_box_caption_val").evaluator_type == "loca"
        cfg = _tiny_cfg("DATASETS.TEST", ("shapes_box_caption_val",))
        d = DatasetCatalog.get("shapes_box_caption_val")[0]
        x = DatasetMapper(cfg, is_train=True, task="box_caption")(d, np.random.default_rng(0))
        assert x["task"] == "box_caption" and len(x["prompt_boxes"]) == len(x["target_ids"]) >= 1
        assert "token_boxes" not in x and "ref_boxes" not in x

        torch.manual_seed(0)
        model = build_model(cfg)
        model.train()
        losses = model([x])
        assert set(losses) == {"loss_text"}  # text loss, no location loss: what the table says
        model.eval()
        test_x = DatasetMapper(cfg, is_train=False, task="box_caption")(d)
        (out,) = model([test_x])
        assert out["task"] == "box_caption" and len(out["captions"]) == len(d["annotations"])
        assert torch.allclose(out["pred_boxes"], torch.tensor([a["bbox"] for a in d["annotations"]]), atol=0.5)

        evaluator = build_evaluator(cfg, "shapes_box_caption_val", output_folder=None)
        assert isinstance(evaluator, LocaEvaluator)
        evaluator.reset()
        evaluator.process([test_x], [out])
        results = evaluator.evaluate()
        assert 0.0 <= results["BLEU-4"] <= 1.0 and "METEOR" not in results

        predictor_out = PixelLLMPredictor(cfg)(d["file_name"], task="box_caption", boxes=[d["annotations"][0]["bbox"]])
        assert predictor_out["task"] == "box_caption" and len(predictor_out["captions"]) == 1
    finally:
        DatasetCatalog.remove("shapes_box_caption_val")
        MetadataCatalog.remove("shapes_box_caption_val")
