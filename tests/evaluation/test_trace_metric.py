"""point_l1: nearest GT corner, normalisation by each frame's size, valid tokens only, mean over images."""
import json

import numpy as np
import pytest
import torch

from pixelllm_d2.evaluation import TraceEvaluator, evaluate_predictions
from pixelllm_d2.evaluation.trace import token_point_l1


def test_token_error_takes_the_nearest_gt_corner():
    # Image 200 x 100. GT corners (0, 0), (100, 100) -> normalised (0, 0), (0.5, 1). Predicted (10, 10) and
    # (100, 90) -> (0.05, 0.1), (0.5, 0.9): nearest GT distances (0.05 + 0.1) / 2 and (0 + 0.1) / 2.
    total, count = token_point_l1(np.array([[10, 10, 90, 80]]), np.array([[0, 0, 100, 100]]), 100, 200)
    assert count == 1 and total == pytest.approx((0.075 + 0.05) / 2)
    # Corners predicted in reverse order still find their GT corner: error 0. Zero GT boxes are not scored.
    pred = np.array([[5, 5, 1, 1], [60, 40, -40, -20]])
    total, count = token_point_l1(pred, np.array([[0, 0, 0, 0], [20, 20, 40, 20]]), 100, 200)
    assert (total, count) == (0.0, 1)
    with pytest.raises(ValueError, match="teacher-forced"):
        token_point_l1(np.zeros((1, 4)), np.array([[0, 0, 0, 0], [1, 1, 1, 1]]), 10, 10)


def trace_input(image_id, height, width, resized_hw, token_boxes):
    return {"image_id": image_id, "height": height, "width": width, "task": "trace",
            "image": torch.zeros(3, *resized_hw, dtype=torch.uint8),
            "token_boxes": torch.tensor(token_boxes, dtype=torch.float32)}


def trace_output(token_boxes, token_corners=None):
    """A model output; `token_corners` are the raw predicted corners (default: the same as the boxes)."""
    n = len(token_boxes)
    corners = token_boxes if token_corners is None else token_corners
    return {"task": "trace", "pred_boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]] * n), "scores": torch.ones(n),
            "captions": ["a"] * n, "token_ids": [torch.arange(len(b)) for b in token_boxes],
            "token_boxes": [torch.tensor(b, dtype=torch.float32) for b in token_boxes],
            "token_corners": [torch.tensor(b, dtype=torch.float32) for b in corners]}


def test_trace_evaluator_maps_frames_and_averages_tokens_then_images(tmp_path):
    evaluator = TraceEvaluator("ln_test", output_dir=str(tmp_path), protocol="all_narratives")
    evaluator.reset()
    # Image 1: original 200 x 100, resized 100 x 50 (GT token boxes in resized pixels, predictions in original).
    # Token 0: no target. Token 1: GT resized (10, 10, 30, 20) = original (20, 20, 60, 40); prediction exact but
    # corners swapped -> 0. Token 2: GT resized (0, 0, 50, 50) = original (0, 0, 100, 100); prediction
    # (10, 10, 100, 90) -> 0.0625 (see above). Image error (0 + 0.0625) / 2. Token 3 (EOS): no target.
    inp1 = trace_input(1, 100, 200, (50, 100), [[[0, 0, 0, 0], [10, 10, 30, 20], [0, 0, 50, 50], [0, 0, 0, 0]]])
    out1 = trace_output([[[7, 7, 7, 7], [60, 40, 20, 20], [10, 10, 100, 90]]])
    # Image 2: 10 x 10 kept at 10 x 10; one token off by 1 px in x for both corners -> 0.1 / 2 = 0.05.
    inp2 = trace_input(2, 10, 10, (10, 10), [[[0, 0, 5, 5]]])
    out2 = trace_output([[[1, 0, 6, 5]]])
    # Image 3: no token with a GT box: left out.
    inp3 = trace_input(3, 10, 10, (10, 10), [[[0, 0, 0, 0]]])
    out3 = trace_output([[[1, 1, 2, 2]]])
    evaluator.process([inp1, inp2], [out1, out2])
    evaluator.process([inp3], [out3])
    results = evaluator.evaluate()
    assert results == {"point_l1": pytest.approx((0.03125 + 0.05) / 2)}
    assert (tmp_path / "predictions.json").exists() and (tmp_path / "groundtruth.json").exists()


@pytest.mark.parametrize("protocol, expected", [
    # official: the raw corner (-10, 0) is 10 px (1.0 of the width) from the GT corner (0, 0): point error
    # (1.0 + 0) / 2 = 0.5, the other corner exact: token error 0.25; the image without a located token counts 0
    ("official", (0.25 + 0.0) / 2),
    # ours: the drawn box, clipped to the image (0, 0, 5, 5), is exact; the empty image is left out
    ("all_narratives", 0.0),
])
def test_the_official_trace_protocol_on_a_hand_computed_fixture(tmp_path, protocol, expected):
    evaluator = TraceEvaluator("ln_test", output_dir=str(tmp_path), protocol=protocol)
    evaluator.reset()
    located = trace_input(1, 10, 10, (10, 10), [[[0, 0, 5, 5]]])
    empty = trace_input(2, 10, 10, (10, 10), [[[0, 0, 0, 0]]])
    evaluator.process([located, empty], [trace_output([[[0, 0, 5, 5]]], token_corners=[[[-10, 0, 5, 5]]]),
                                         trace_output([[[1, 1, 2, 2]]])])
    assert evaluator.evaluate() == {"point_l1": pytest.approx(expected)}
    gt = json.loads((tmp_path / "groundtruth.json").read_text())
    assert gt["trace_protocol"] == protocol  # tools/evaluate.py scores the saved files the same way
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert evaluate_predictions("trace", gt, preds) == {"point_l1": pytest.approx(expected)}


def test_trace_prediction_for_unknown_narrative_is_an_error():
    gt = {"images": [{"id": 1, "height": 10, "width": 10}],
          "annotations": [{"image_id": 1, "query_index": 0, "token_boxes": [[0, 0, 5, 5]]}]}
    rec = {"image_id": 1, "query_index": 1, "bbox": [0, 0, 10, 10], "bbox_mode": "XYWH_ABS",
           "token_boxes": [[0, 0, 5, 5]]}
    with pytest.raises(ValueError, match=r"image_id/query_index \(1, 1\) of image 1 is not in"):
        evaluate_predictions("trace", gt, [rec])
    with pytest.raises(ValueError, match="no prediction for a narrative"):
        evaluate_predictions("trace", gt, [])
