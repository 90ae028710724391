import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from pixelllm_d2.utils.serialization import mask_to_rle, output_to_json, write_json


@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (120, 90)])
def test_mask_rle_round_trip(hw):
    m = np.random.default_rng(0).random(hw) > 0.6
    for mask in (m, torch.from_numpy(m)):
        rle = mask_to_rle(mask)
        assert rle["size"] == list(hw) and isinstance(rle["counts"], str)
        json.dumps(rle)
        assert np.array_equal(mask_utils.decode(rle).astype(bool), m)
    with pytest.raises(ValueError, match=r"\(H, W\) mask"):
        mask_to_rle(np.zeros((1, 3, 4), bool))


def _output(task, **extra):
    out = {
        "task": task,
        # one box beyond the image, one with swapped corners
        "pred_boxes": torch.tensor([[-5.0, 3.0, 130.0, 40.0], [50.0, 60.0, 20.0, 10.0]]),
        "scores": torch.tensor([-0.25, 0.5]),
        "captions": ["a red circle", "a square"],
        "words": [["a", "red", "circle"], ["a", "square"]],
        "word_points": [torch.tensor([[1.0, 2.0], [-3.0, 50.0], [127.456, 99.0]]), torch.tensor([[5.0, 5.0], [6.0, 7.0]])],
        "word_boxes": [torch.tensor([[0.0, 0.0, 2.0, 4.0], [-6.0, 40.0, 0.0, 60.0], [120.0, 90.0, 140.0, 110.0]]), torch.zeros(2, 4)],
    }
    out.update(extra)
    return out


def test_output_to_json_clips_everything_to_the_image():
    rec = output_to_json(_output("region"), "img.png", height=96, width=128)
    assert rec["image"] == "img.png" and (rec["width"], rec["height"], rec["task"]) == (128, 96, "region")
    r0, r1 = rec["results"]
    assert r0["box"] == [0.0, 3.0, 128.0, 40.0] and r1["box"] == [20.0, 10.0, 50.0, 60.0]
    assert r0["score"] == -0.25 and r0["caption"] == "a red circle"
    assert r0["words"] == [
        {"word": "a", "point": [1.0, 2.0], "box": [0.0, 0.0, 2.0, 4.0]},
        {"word": "red", "point": [0.0, 50.0], "box": [0.0, 40.0, 0.0, 60.0]},
        {"word": "circle", "point": [127.46, 96.0], "box": [120.0, 90.0, 128.0, 96.0]},
    ]
    assert "mask_rle" not in r0
    assert json.loads(json.dumps(rec)) == rec  # plain JSON types only


def test_output_to_json_refer_and_points():
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[0, 10:20, 30:50] = True
    out = _output("refer", pred_masks=masks, mask_scores=torch.tensor([0.75, 0.5]))
    rec = output_to_json(out, "img.png", 96, 128, texts=["the  red circle", "the square"])
    r0 = rec["results"][0]
    assert r0["caption"] == "the  red circle" and r0["mask_score"] == 0.75
    assert mask_utils.area(r0["mask_rle"]) == 200
    rec = output_to_json(_output("region"), "img.png", 96, 128, points=[[10, 20], [200, 30]])
    assert all("box" not in r for r in rec["results"])
    assert rec["results"][0]["points"] == [[10.0, 20.0], [128.0, 30.0]]


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "out" / "a.json"
    write_json(str(path), {"x": [1, 2]})
    write_json(str(path), {"x": [3]})
    assert json.loads(path.read_text()) == {"x": [3]}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]
