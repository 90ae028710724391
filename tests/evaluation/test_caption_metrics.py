"""Caption metrics (BLEU-4, METEOR, ROUGE-L, CIDEr), location-conditioned and image captioning, with real Java."""
import logging
import math

import pytest

from pixelllm_d2.evaluation import evaluate_predictions
from pixelllm_d2.evaluation.text_metrics import caption_metrics, ptb_tokenize


def test_ptb_tokenizer_lowercases_strips_punctuation_and_keeps_empty_lines():
    assert ptb_tokenize(["A man, riding a Horse.", "", "Hello\nworld!", ""]) == ["a man riding a horse", "",
                                                                                 "hello world", ""]
    assert ptb_tokenize([]) == []


@pytest.mark.parametrize("hyps, refs, expected", [
    # Identical captions with no word shared between items: every n-gram has IDF log(2), CIDEr-D = 10 per item.
    (["a red car parked outside", "two dogs play in snow"], [["a red car parked outside"], ["two dogs play in snow"]],
     {"BLEU-4": 1.0, "METEOR": 1.0, "ROUGE-L": 1.0, "CIDEr": 10.0}),
    (["qwerty zxcv"], [["a red car parked outside"]], {"METEOR": 0.0, "ROUGE-L": 0.0, "CIDEr": 0.0}),
    # ROUGE-L: LCS 3 of 4 words both ways -> F = 0.75.
    (["a b c d"], [["a b x d"]], {"ROUGE-L": 0.75}),
    # BLEU-4: all n-grams match, brevity penalty exp(1 - 8 / 4).
    (["one two three four"], [["one two three four five six seven eight"]], {"BLEU-4": math.exp(-1)}),
])
def test_caption_metrics_hand_values(meteor, hyps, refs, expected):
    results = caption_metrics(hyps, refs, meteor)
    assert set(results) == {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-4), key
    if hyps == ["qwerty zxcv"]:
        assert results["BLEU-4"] < 1e-3


def vg(regions):
    """VG json from (region id, image id, caption) triples."""
    return {"images": [{"id": i, "height": 50, "width": 50} for i in sorted({r[1] for r in regions})],
            "annotations": [{"id": rid, "image_id": i, "bbox": [0, 0, 10, 10], "caption": c} for rid, i, c in regions]}


def loca_pred(region_id, image_id, caption):
    return {"image_id": image_id, "region_id": region_id, "bbox": [0, 0, 10, 10], "bbox_mode": "XYWH_ABS",
            "score": 0.0, "caption": caption}


def test_loca_each_region_is_its_own_item_and_missing_ones_score_empty(shared_meteor, caplog):
    gt = vg([(11, 1, "a red car parked outside"), (12, 1, "two dogs play in snow"), (13, 2, "a white clock")])
    preds = [loca_pred(11, 1, "A red car, parked outside."), loca_pred(12, 1, "two dogs play in snow")]
    with caplog.at_level(logging.WARNING):
        results = evaluate_predictions("loca", gt, preds)
    assert "1 of 3 GT items (region_id) have no prediction" in caplog.text
    # ROUGE-L: 1, 1, 0 (empty caption); METEOR of the third is 0 as well.
    assert results["ROUGE-L"] == pytest.approx(2 / 3, abs=1e-6)
    assert 0 < results["METEOR"] < 1 and 0 < results["CIDEr"]
    full = evaluate_predictions("loca", gt, preds + [loca_pred(13, 2, "a white clock")])
    assert full["ROUGE-L"] == pytest.approx(1.0) and full["METEOR"] == pytest.approx(1.0)


def test_loca_with_refer_ground_truth_uses_sent_ids(shared_meteor):
    gt = {"images": [{"id": 5, "height": 50, "width": 50}],
          "annotations": [{"sent_id": 1, "ref_id": 9, "image_id": 5, "bbox": [0, 0, 5, 5], "sentence": "left cat"},
                          {"sent_id": 2, "ref_id": 9, "image_id": 5, "bbox": [0, 0, 5, 5], "sentence": "cat on left"}]}
    preds = [{"image_id": 5, "sent_id": 1, "bbox": [0, 0, 5, 5], "bbox_mode": "XYWH_ABS", "caption": "left cat"},
             {"image_id": 5, "sent_id": 2, "bbox": [0, 0, 5, 5], "bbox_mode": "XYWH_ABS", "caption": "cat on left"}]
    results = evaluate_predictions("loca", gt, preds, skip_meteor=True)
    assert "METEOR" not in results and results["ROUGE-L"] == pytest.approx(1.0)


@pytest.mark.parametrize("preds, message", [
    ([loca_pred(11, 1, "x"), loca_pred(11, 1, "y")], "second prediction for region_id 11"),
    ([loca_pred(11, 2, "x")], "region_id 11 of image 2 is not in"),
    ([{"image_id": 1, "bbox": [0, 0, 1, 1], "bbox_mode": "XYWH_ABS", "caption": "x"}], r"lacks \['region_id'\]"),
])
def test_loca_bad_predictions(preds, message):
    with pytest.raises(ValueError, match=message):
        evaluate_predictions("loca", vg([(11, 1, "a"), (12, 2, "b")]), preds, skip_meteor=True)


def test_coco_captions_scores_one_caption_per_image(shared_meteor, caplog):
    gt = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
          "annotations": [{"image_id": 1, "caption": "a red car parked outside"},
                          {"image_id": 1, "caption": "a car on a street"},
                          {"image_id": 2, "caption": "two dogs play in snow"}]}
    preds = [{"image_id": 1, "caption": "a red car parked outside"},
             {"image_id": 2, "caption": "two dogs play in snow"},
             {"image_id": 3, "caption": "no ground truth here"}]  # plain COCO results: no boxes needed
    with caplog.at_level(logging.WARNING):
        results = evaluate_predictions("caption", gt, preds)
    assert "1 images have no GT caption" in caplog.text
    assert results["BLEU-4"] == pytest.approx(1.0) and results["METEOR"] == pytest.approx(1.0)
    assert results["ROUGE-L"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="second prediction for image_id 1"):
        evaluate_predictions("caption", gt, preds + [{"image_id": 1, "caption": "x"}], skip_meteor=True)


def test_java_missing_is_a_clear_error(monkeypatch):
    from pixelllm_d2.evaluation import text_metrics

    monkeypatch.setattr(text_metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="PTB tokenizer.*needs Java.*apt-get install openjdk-17-jre-headless"):
        evaluate_predictions("caption", {"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": "a"}]},
                             [{"image_id": 1, "caption": "a"}], skip_meteor=True)
    with pytest.raises(RuntimeError, match="METEOR.*needs Java"):
        text_metrics.Meteor()


def test_a_dead_meteor_process_is_a_clear_error_not_a_hang():
    from pixelllm_d2.evaluation.text_metrics import Meteor

    with Meteor() as m:
        m._impl.meteor_p.kill()
        m._impl.meteor_p.wait()
        with pytest.raises(RuntimeError, match="METEOR's Java process failed"):
            m.score(["a"], [["a"]])
