"""The evaluator protocol: DatasetEvaluators, inference_on_dataset, gathering across processes, build_evaluator."""
import datetime
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pixelllm_d2.config import get_cfg
from pixelllm_d2.evaluation import (
    DatasetEvaluator, DatasetEvaluators, DenseCapEvaluator, LocaEvaluator, RefEvaluator, TraceEvaluator,
    build_evaluator, inference_on_dataset,
)
from pixelllm_d2.structures import BoxMode


class CountingEvaluator(DatasetEvaluator):
    def __init__(self, name):
        self.name = name

    def reset(self):
        self.count = 0

    def process(self, inputs, outputs):
        self.count += len(outputs)

    def evaluate(self):
        return {self.name: self.count}


class RecordingModel(torch.nn.Module):
    """Returns one densecap-style result per input and records the mode it was called in."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.calls = []

    def forward(self, inputs):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return [{"task": "densecap", "pred_boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]) * self.weight,
                 "scores": torch.tensor([0.5]), "captions": ["a"]} for _ in inputs]


def test_inference_runs_in_eval_mode_without_grad_and_restores_the_mode(caplog):
    model = RecordingModel().train()
    loader = [[{"image_id": i}] for i in range(3)]
    with caplog.at_level(logging.INFO, logger="pixelllm_d2.evaluation.evaluator"):
        results = inference_on_dataset(model, loader, [CountingEvaluator("a"), CountingEvaluator("b")])
    assert results == {"a": 3, "b": 3}
    assert model.calls == [(False, False)] * 3 and model.training
    assert "Inference done 3/3 batches" in caplog.text and "ETA=0:00:00" in caplog.text
    assert inference_on_dataset(model, iter(loader), None) == {}  # no len(): no ETA, still runs


def test_colliding_metric_names_are_an_error():
    evaluators = DatasetEvaluators([CountingEvaluator("a"), CountingEvaluator("a")])
    evaluators.reset()
    with pytest.raises(KeyError, match="'a'"):
        evaluators.evaluate()


def refer_dicts():
    """Two RefCOCO-style dataset dicts (docs/DESIGN.md §1), 40 x 40 images."""
    dicts = []
    for image_id in (1, 2, 3, 4):
        ann = {"bbox": [0.0, 0.0, 10.0, 10.0], "bbox_mode": BoxMode.XYXY_ABS,
               "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]], "sentences": [f"left {image_id}", f"corner {image_id}"],
               "sent_ids": [10 * image_id, 10 * image_id + 1], "ref_id": image_id, "ann_id": image_id, "category_id": 1}
        dicts.append({"file_name": f"/x/{image_id}.jpg", "image_id": image_id, "height": 40, "width": 40,
                      "annotations": [ann]})
    return dicts


def refer_batch(image_id, box):
    """One mapper output and model output of a referring image with its two expressions."""
    inp = {"image_id": image_id, "height": 40, "width": 40, "task": "refer",
           "query_meta": [{"sent_id": 10 * image_id + k, "ref_id": image_id} for k in (0, 1)]}
    mask = torch.zeros(2, 40, 40, dtype=torch.bool)
    mask[:, : box[3], : box[2]] = True
    out = {"task": "refer", "pred_boxes": torch.tensor([box, box], dtype=torch.float32), "scores": torch.ones(2),
           "captions": [f"left {image_id}", f"corner {image_id}"], "pred_masks": mask}
    return inp, out


BOXES = {1: [0, 0, 10, 10], 2: [0, 0, 10, 5], 3: [0, 0, 10, 6], 4: [0, 0, 20, 20]}  # IoU 1, 0.5, 0.6, 0.25


def test_refer_evaluator_on_dataset_dicts(tmp_path):
    evaluator = RefEvaluator("refcoco_test", dataset_dicts=refer_dicts(), output_dir=str(tmp_path))
    for image_id, box in BOXES.items():
        inp, out = refer_batch(image_id, box)
        evaluator.process([inp], [out])
    results = evaluator.evaluate()
    assert results["P@0.5"] == pytest.approx(0.5)
    assert results["mask_mIoU"] == pytest.approx((1 + 0.5 + 0.6 + 0.25) / 4)
    assert results["mask_cIoU"] == pytest.approx((100 + 50 + 60 + 100) / (100 + 100 + 100 + 400))
    assert results["mask_P@0.5"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    records = json.loads((tmp_path / "predictions.json").read_text())
    assert len(records) == 8 and all(r["bbox_mode"] == "XYWH_ABS" for r in records)
    assert records[0]["sent_id"] == 10 and records[0]["ref_id"] == 1 and records[0]["bbox"] == [0, 0, 10, 10]
    assert set(records[0]["segmentation"]) == {"size", "counts"}


def _run_rank(rank, init_file, out_dir):
    """Evaluate this rank's shard in a 2-process gloo group; rank 1 repeats image 1, as a padding sampler would."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        evaluator = RefEvaluator("refcoco_test", dataset_dicts=refer_dicts(), output_dir=out_dir)
        for image_id in ([1, 3] if rank == 0 else [2, 4, 1]):
            evaluator.process(*[[x] for x in refer_batch(image_id, BOXES[image_id])])
        return evaluator.evaluate()
    finally:
        dist.destroy_process_group()


def _child_rank(init_file):
    assert _run_rank(1, init_file, None) == {}


def test_results_are_gathered_across_processes(tmp_path):
    # This process is rank 0; one spawned process (a fresh interpreter, safe with torch's threads) is rank 1.
    init_file = str(tmp_path / "pg_init")
    child = mp.get_context("spawn").Process(target=_child_rank, args=(init_file,))
    child.start()
    try:
        results = _run_rank(0, init_file, str(tmp_path))
    finally:
        child.join(timeout=120)
    assert child.exitcode == 0
    assert results["P@0.5"] == pytest.approx(0.5)
    assert results["mask_mIoU"] == pytest.approx((1 + 0.5 + 0.6 + 0.25) / 4)
    assert len(json.loads((tmp_path / "predictions.json").read_text())) == 8


@pytest.mark.parametrize("evaluator_type, cls", [
    ("refer", RefEvaluator), ("densecap", DenseCapEvaluator), ("loca", LocaEvaluator), ("trace", TraceEvaluator),
])
def test_build_evaluator_chooses_by_metadata(tmp_path, evaluator_type, cls):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.SKIP_METEOR = True
    dicts = refer_dicts() if evaluator_type in ("refer", "loca") else [
        {"image_id": 1, "height": 10, "width": 10,
         "annotations": [{"bbox": [0, 0, 5, 5], "bbox_mode": BoxMode.XYXY_ABS, "caption": "a", "id": 3}]}]
    evaluator = build_evaluator(cfg, "some_test", metadata=SimpleNamespace(evaluator_type=evaluator_type),
                                dataset_dicts=dicts)
    assert type(evaluator) is cls
    assert evaluator._output_dir == os.path.join(str(tmp_path), "inference", "some_test")
    assert evaluator._skip_meteor


def test_build_evaluator_rejects_unknown_types():
    with pytest.raises(ValueError, match="evaluator_type 'coco'.*known"):
        build_evaluator(get_cfg(), "x", metadata=SimpleNamespace(evaluator_type="coco"), dataset_dicts=[])
