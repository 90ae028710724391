"""Dense-captioning mAP: GT merging, max-IoU matching, thresholds, AP, on hand-computed fixtures."""
import numpy as np
import pytest

from pixelllm_d2.evaluation import evaluate_predictions
from pixelllm_d2.evaluation.densecap import (
    DenseCapScorer, IOU_THRESHOLDS, METEOR_THRESHOLDS, average_precision, match_predictions, merge_gt_boxes,
)


def vg_gt(annotations, images=None):
    """GRiT-style VG json from (image_id, [x, y, w, h], caption) triples; every image 100x100."""
    ids = images if images is not None else sorted({a[0] for a in annotations})
    return {
        "images": [{"id": i, "height": 100, "width": 100} for i in ids],
        "annotations": [{"id": k + 1, "image_id": i, "bbox": list(b), "caption": c}
                        for k, (i, b, c) in enumerate(annotations)],
    }


def pred(image_id, box, score, caption):
    return {"image_id": image_id, "bbox": list(box), "bbox_mode": "XYWH_ABS", "score": score, "caption": caption}


def test_merge_takes_largest_group_first_and_iou_0_7_merges():
    # IoU(A, C) is exactly 0.7 and merges; C overlaps A, B, E at >= 0.7 (the largest group) and takes them all,
    # although IoU(A, E) = 0.6; D stays alone; the zero-area F overlaps nothing, not even itself, and is dropped.
    boxes = [[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 7], [50, 50, 10, 10], [0, 0, 10, 6], [5, 5, 0, 4]]
    merged, refs = merge_gt_boxes(np.array(boxes, float), ["a", "b\n", "c", "d", "e", "f"])
    np.testing.assert_allclose(merged, [[0, 0, 10, 8], [50, 50, 10, 10]])
    assert refs == [["a", "b", "c", "e"], ["d"]]


def test_merge_below_threshold_keeps_boxes_apart():
    merged, refs = merge_gt_boxes(np.array([[0, 0, 10, 10], [0, 0, 10, 6.9]]), ["a", "b"])
    assert len(merged) == 2 and refs == [["a"], ["b"]]
    merged, refs = merge_gt_boxes(np.zeros((0, 4)), [])
    assert merged.shape == (0, 4) and refs == []


def test_match_uses_max_iou_gt_not_best_available():
    gt = np.array([[0, 0, 10, 10], [8, 0, 10, 10]], float)
    preds = np.array([[0, 0, 10, 10], [3, 0, 10, 10]], float)  # the second: IoU 0.538 with GT 0, 0.333 with GT 1
    matched, iou, index = match_predictions(preds, gt)
    assert matched.tolist() == [True, False]
    np.testing.assert_allclose(iou, [1.0, 70 / 130])
    assert index.tolist() == [0, 0]
    matched, iou, index = match_predictions(preds, np.zeros((0, 4)))
    assert matched.tolist() == [False, False] and iou.tolist() == [-1, -1] and index.tolist() == [-1, -1]


@pytest.mark.parametrize("is_tp, num_positives, expected", [
    ([True], 1, 1.0),
    ([True], 2, 0.51),  # recall 0.5 reaches r = 0 .. 0.50: 51 of the 100 levels
    ([False, True], 1, 0.5),
    ([True, False, True], 2, (51 * 1.0 + 49 * 2 / 3) / 100),
    ([True, True], 0, 0.0),
    ([], 3, 0.0),
])
def test_average_precision_100_points(is_tp, num_positives, expected):
    assert average_precision(np.array(is_tp, bool), num_positives) == pytest.approx(expected, abs=1e-12)


def test_max_iou_rule_and_strict_meteor_threshold(fake_meteor):
    gt = vg_gt([(1, [0, 0, 10, 10], "g1"), (1, [8, 0, 10, 10], "g2")])
    preds = [pred(1, [0, 0, 10, 10], 0.9, "p1"), pred(1, [3, 0, 10, 10], 0.8, "p2")]
    meteor = fake_meteor({"p1": 0.1})
    results = DenseCapScorer(gt, preds, meteor).score([1])
    # Only the matched pair is scored; p2's max-IoU GT is taken, so it is unmatched (COCO matching would give it
    # g2 at IoU 0.333 and AP 1 at t = 0.3).
    assert meteor.calls == [(["p1"], [["g1"]])]
    for t in IOU_THRESHOLDS:
        assert results[f"mAP_detection_iou{t:.1f}"] == pytest.approx(0.51)
        for m in METEOR_THRESHOLDS:  # METEOR 0.1 passes m = 0 and 0.05 only (strictly greater)
            assert results[f"mAP_iou{t:.1f}_meteor{m:.2f}"] == pytest.approx(0.51 if m < 0.1 else 0.0)
    assert results["mAP_detection"] == pytest.approx(0.51)
    assert results["mAP"] == pytest.approx(0.17)


def test_iou_threshold_is_inclusive(fake_meteor):
    gt = vg_gt([(1, [0, 0, 10, 10], "g")])
    results = DenseCapScorer(gt, [pred(1, [0, 0, 10, 5], 1.0, "p")], fake_meteor({"p": 1.0})).score([1])  # IoU 0.5
    assert [results[f"mAP_detection_iou{t:.1f}"] for t in IOU_THRESHOLDS] == pytest.approx([1, 1, 1, 0, 0])
    assert results["mAP_detection"] == pytest.approx(0.6)
    assert results["mAP"] == pytest.approx(0.6)


def test_duplicate_detection_is_a_false_positive():
    gt = vg_gt([(1, [0, 0, 10, 10], "g1"), (1, [50, 50, 10, 10], "g2")])
    preds = [pred(1, [0, 0, 10, 10], 0.9, "a"), pred(1, [0, 0, 10, 10], 0.8, "a"), pred(1, [50, 50, 10, 10], 0.7, "b")]
    results = DenseCapScorer(gt, preds, None).score([1])
    assert "mAP" not in results  # no METEOR: detection metrics only
    assert results["mAP_detection"] == pytest.approx((51 + 49 * 2 / 3) / 100)


def test_images_without_gt_or_predictions():
    # image 1: GT, no prediction; image 2: a prediction, no GT; image 3: GT and a perfect but lower-scored one.
    gt = vg_gt([(1, [0, 0, 10, 10], "g"), (3, [0, 0, 10, 10], "g")], images=[1, 2, 3])
    preds = [pred(2, [0, 0, 10, 10], 0.9, "p"), pred(3, [0, 0, 10, 10], 0.5, "p")]
    results = DenseCapScorer(gt, preds, None).score([1, 2, 3])
    assert results["mAP_detection"] == pytest.approx(0.255)  # precision 0.5 up to recall 0.5, positives = 2
    assert DenseCapScorer(gt, [], None).score([1, 2, 3])["mAP_detection"] == 0.0


def test_equal_scores_follow_ground_truth_image_order():
    anns = [(2, [0, 0, 10, 10], "g")]
    preds = [pred(1, [50, 50, 10, 10], 0.5, "p"), pred(2, [0, 0, 10, 10], 0.5, "p")]
    assert DenseCapScorer(vg_gt(anns, images=[1, 2]), preds, None).score([1, 2])["mAP_detection"] == pytest.approx(0.5)
    assert DenseCapScorer(vg_gt(anns, images=[2, 1]), preds, None).score([2, 1])["mAP_detection"] == pytest.approx(1.0)


def test_empty_gt_caption_scores_the_official_empty_pair(fake_meteor):
    gt = vg_gt([(1, [0, 0, 10, 10], ""), (1, [0, 0, 10, 9.5], "a cat")])  # merged: references ["", "a cat"]
    meteor = fake_meteor({"EMPTY": 0.0})
    DenseCapScorer(gt, [pred(1, [0, 0, 10, 10], 1.0, "a dog")], meteor)
    assert meteor.calls == [(["EMPTY"], [["EMPTY"]])]


def test_real_meteor_identical_unrelated_and_empty_captions(shared_meteor):
    gt = vg_gt([(1, [0, 0, 10, 10], "a red car on the street"), (1, [50, 50, 20, 20], "a man riding a horse"),
                (2, [10, 10, 30, 30], ""), (2, [60, 10, 30, 30], "a white clock")])
    boxes = [(1, [0, 0, 10, 10], 0.9), (1, [50, 50, 20, 20], 0.8),
             (2, [10, 10, 30, 30], 0.7), (2, [60, 10, 30, 30], 0.6)]
    captions = ["a red car on the street", "a man riding a horse", "anything at all", "a white clock"]
    identical = [pred(i, b, s, c) for (i, b, s), c in zip(boxes, captions)]
    results = evaluate_predictions("densecap", gt, identical)
    assert results["mAP"] == pytest.approx(1.0) and results["mAP_detection"] == pytest.approx(1.0)

    # Unrelated captions: only the match of the empty GT caption passes, as ("EMPTY", ["EMPTY"]) has METEOR 1;
    # it is third by score: precision 1/3 up to recall 0.25 (26 of the 100 levels).
    unrelated = [dict(p, caption=c) for p, c in zip(identical, ["green", "sky", "x", "blue"])]
    results = evaluate_predictions("densecap", gt, unrelated)
    assert results["mAP_detection"] == pytest.approx(1.0)
    assert results["mAP"] == pytest.approx(26 / 300)

    # Empty predicted captions have METEOR 0, which fails even m = 0. Without the empty GT, the prediction on its
    # box overlaps no GT of image 2 (unmatched): TP, TP, FP, TP over 3 positives.
    no_empty_gt = {**gt, "annotations": [a for a in gt["annotations"] if a["caption"]]}
    results = evaluate_predictions("densecap", no_empty_gt, [dict(p, caption="") for p in identical])
    assert results["mAP"] == 0.0
    assert results["mAP_detection"] == pytest.approx((34 + 33 + 33 * 0.75) / 100)


def test_skip_meteor_needs_no_java(monkeypatch):
    from pixelllm_d2.evaluation import text_metrics

    monkeypatch.setattr(text_metrics.shutil, "which", lambda name: None)
    gt = vg_gt([(1, [0, 0, 10, 10], "g")])
    results = evaluate_predictions("densecap", gt, [pred(1, [0, 0, 10, 10], 1.0, "g")], skip_meteor=True)
    assert results["mAP_detection"] == 1.0 and "mAP" not in results
    with pytest.raises(RuntimeError, match="apt-get install openjdk-17-jre-headless"):
        evaluate_predictions("densecap", gt, [pred(1, [0, 0, 10, 10], 1.0, "g")])


@pytest.mark.parametrize("record, message", [
    ({"image_id": 9, "bbox": [0, 0, 1, 1], "bbox_mode": "XYWH_ABS", "score": 1.0, "caption": ""}, "not in the ground"),
    ({"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0, "caption": ""}, "--box-format"),
    ({"image_id": 1, "bbox": [5, 5, 1, 1], "bbox_mode": "XYXY_ABS", "score": 1.0, "caption": ""}, "negative width"),
    ({"image_id": 1, "bbox": [0, 0, 1, 1], "bbox_mode": "XYWH_ABS", "caption": ""}, r"lacks \['score'\]"),
    ({"image_id": 1, "bbox": [0, 0, 1], "bbox_mode": "XYWH_ABS", "score": 1.0, "caption": ""}, "4 finite numbers"),
])
def test_bad_records_name_the_record(record, message):
    gt = vg_gt([(1, [0, 0, 10, 10], "g")])
    with pytest.raises(ValueError, match=f"record 0.*{message}"):
        DenseCapScorer(gt, [record], None)


def test_bad_ground_truth_names_the_annotation():
    gt = vg_gt([(1, [0, 0, 10, 10], "g")])
    gt["annotations"][0]["bbox"] = [0, 0, -1, 10]
    with pytest.raises(ValueError, match=r"annotations\[0\].*negative width"):
        DenseCapScorer(gt, [], None, gt_source="vg.json")
