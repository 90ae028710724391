"""Referring metrics: strict P@0.5, cIoU vs mIoU, mask P@0.5, misses, and bad inputs."""
import logging

import numpy as np
import pytest
import torch

from pixelllm_d2.evaluation import evaluate_predictions
from pixelllm_d2.evaluation.records import mask_rle
from pixelllm_d2.evaluation.refer import ReferScorer


def rect_mask(h, w, x0, y0, x1, y1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def refer_gt(sentences, size=(40, 40)):
    """Refer json from (sent_id, image_id, [x, y, w, h], segmentation or None) tuples."""
    images = sorted({s[1] for s in sentences})
    anns = []
    for sent_id, image_id, box, segm in sentences:
        ann = {"sent_id": sent_id, "ref_id": 100 + sent_id, "image_id": image_id, "bbox": box,
               "sentence": f"s{sent_id}"}
        if segm is not None:
            ann["segmentation"] = segm
        anns.append(ann)
    return {"images": [{"id": i, "height": size[0], "width": size[1]} for i in images], "annotations": anns}


def pred(sent_id, image_id, box, mask=None):
    rec = {"image_id": image_id, "sent_id": sent_id, "bbox": box, "bbox_mode": "XYWH_ABS", "score": 1.0}
    if mask is not None:
        rec["segmentation"] = mask_rle(mask)
    return rec


def test_iou_exactly_half_is_not_a_hit():
    gt = refer_gt([(1, 1, [0, 0, 10, 10], None), (2, 1, [0, 0, 10, 10], None)])
    preds = [pred(1, 1, [0, 0, 10, 5]), pred(2, 1, [0, 0, 10, 5.01])]  # IoU 0.5 and 0.501
    assert evaluate_predictions("refer", gt, preds) == {"P@0.5": 0.5}


def test_cumulative_and_mean_iou_differ():
    # Expression 1: a small mask predicted exactly (I = U = 4). Expression 2: a large mask, I = 100, U = 400.
    # GT masks as polygons (rasterised by pycocotools) and as an RLE; predictions as RLEs.
    gt = refer_gt([
        (1, 1, [0, 0, 2, 2], [[0, 0, 2, 0, 2, 2, 0, 2]]),
        (2, 2, [0, 0, 20, 10], mask_rle(rect_mask(40, 40, 0, 0, 20, 10))),
    ])
    preds = [pred(1, 1, [0, 0, 2, 2], rect_mask(40, 40, 0, 0, 2, 2)),
             pred(2, 2, [0, 0, 20, 10], rect_mask(40, 40, 10, 0, 20, 30))]
    results = evaluate_predictions("refer", gt, preds)
    assert results["P@0.5"] == 1.0
    assert results["mask_cIoU"] == pytest.approx(104 / 404)
    assert results["mask_mIoU"] == pytest.approx((1 + 0.25) / 2)
    assert results["mask_P@0.5"] == pytest.approx(0.5)
    # the second mask's box [10, 0, 20, 30] has IoU 100 / 400 with the GT box: only the first is a hit
    assert results["mask_box_P@0.5"] == pytest.approx(0.5)


def test_mask_box_is_scored_apart_from_the_predicted_box():
    # The predicted box misses, but the mask's bounding box is the GT box (and the reverse); an empty mask has no box.
    gt = refer_gt([(k, 1, [0, 0, 10, 10], [[0, 0, 10, 0, 10, 10, 0, 10]]) for k in (1, 2, 3)])
    preds = [pred(1, 1, [20, 20, 10, 10], rect_mask(40, 40, 0, 0, 10, 10)),
             pred(2, 1, [0, 0, 10, 10], rect_mask(40, 40, 20, 20, 30, 30)),
             pred(3, 1, [0, 0, 10, 10], rect_mask(40, 40, 0, 0, 0, 0))]
    results = evaluate_predictions("refer", gt, preds)
    assert results["P@0.5"] == pytest.approx(2 / 3)
    assert results["mask_box_P@0.5"] == pytest.approx(1 / 3)
    assert results["mask_P@0.5"] == pytest.approx(1 / 3)


def test_missing_prediction_counts_as_a_miss(caplog):
    gt = refer_gt([(1, 1, [0, 0, 10, 10], [[0, 0, 10, 0, 10, 10, 0, 10]]),
                   (2, 1, [0, 0, 10, 10], [[0, 0, 10, 0, 10, 10, 0, 10]])])
    with caplog.at_level(logging.WARNING, logger="pixelllm_d2.evaluation.refer"):
        results = evaluate_predictions("refer", gt, [pred(1, 1, [0, 0, 10, 10], rect_mask(40, 40, 0, 0, 10, 10))])
    assert "1 of 2 expressions have no prediction" in caplog.text
    assert results == pytest.approx({"P@0.5": 0.5, "mask_cIoU": 0.5, "mask_mIoU": 0.5, "mask_P@0.5": 0.5,
                                     "mask_box_P@0.5": 0.5})


def test_box_only_predictions_give_box_metrics_only():
    gt = refer_gt([(1, 1, [0, 0, 10, 10], [[0, 0, 10, 0, 10, 10, 0, 10]])])
    assert evaluate_predictions("refer", gt, [pred(1, 1, [0, 0, 10, 10])]) == {"P@0.5": 1.0}


@pytest.mark.parametrize("preds, message", [
    ([pred(1, 1, [0, 0, 1, 1]), pred(1, 1, [0, 0, 1, 1])], "second prediction for sent_id 1"),
    ([pred(7, 1, [0, 0, 1, 1])], "sent_id 7 of image 1 is not in"),
    ([pred(1, 1, [0, 0, 1, 1], rect_mask(20, 20, 0, 0, 1, 1))], r"mask of size \[20, 20\]"),
    ([{"image_id": 1, "bbox": [0, 0, 1, 1], "bbox_mode": "XYWH_ABS"}], r"lacks \['sent_id'\]"),
])
def test_bad_predictions(preds, message):
    gt = refer_gt([(1, 1, [0, 0, 10, 10], [[0, 0, 10, 0, 10, 10, 0, 10]])])
    with pytest.raises(ValueError, match=message):
        ReferScorer(gt, preds)


def test_bootstrap_is_seeded_and_degenerate_sets_have_zero_spread():
    gt = refer_gt([(i, i, [0, 0, 10, 10], None) for i in range(1, 9)])
    preds = [pred(i, i, [0, 0, 10, 10] if i % 2 else [30, 30, 5, 5]) for i in range(1, 9)]
    a = evaluate_predictions("refer", gt, preds, repeats=20, seed=3)
    b = evaluate_predictions("refer", gt, preds, repeats=20, seed=3)
    c = evaluate_predictions("refer", gt, preds, repeats=20, seed=4)
    assert a == b and a["P@0.5_boot_mean"] != c["P@0.5_boot_mean"]
    assert a["P@0.5"] == 0.5 and 0 < a["P@0.5_boot_std"] < 0.5 and 0 <= a["P@0.5_boot_mean"] <= 1
    assert a["bootstrap_repeats"] == 20 and a["bootstrap_seed"] == 3
    same = evaluate_predictions("refer", gt, [pred(i, i, [0, 0, 10, 10]) for i in range(1, 9)], repeats=5, seed=0)
    assert same["P@0.5_boot_mean"] == 1.0 and same["P@0.5_boot_std"] == 0.0
    with pytest.raises(ValueError, match="at least 2 repeats"):
        evaluate_predictions("refer", gt, preds, repeats=1)
    np.testing.assert_allclose(a["P@0.5_boot_std"], b["P@0.5_boot_std"])
