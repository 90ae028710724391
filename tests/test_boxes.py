"""Box helpers: clipping (one size for all boxes or one per box) and SAM-style box-prompt noise."""
import pytest
import torch

from pixelllm_d2.structures import clip_boxes, jitter_boxes

BOXES = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 100.0, 100.0], [90.0, 5.0, 98.0, 15.0]])
IMAGE_WH = torch.tensor([[100.0, 60.0], [100.0, 100.0], [100.0, 60.0]])


def test_clip_boxes_to_one_size_or_one_size_per_box():
    boxes = torch.tensor([[-5.0, 3.0, 120.0, 70.0], [10.0, -2.0, 50.0, 200.0]])
    assert torch.equal(clip_boxes(boxes, 60, 100), torch.tensor([[0.0, 3.0, 100.0, 60.0], [10.0, 0.0, 50.0, 60.0]]))
    wh = torch.tensor([[100.0, 60.0], [80.0, 150.0]])
    assert torch.equal(clip_boxes(boxes, wh[:, 1:], wh[:, :1]),
                       torch.tensor([[0.0, 3.0, 100.0, 60.0], [10.0, 0.0, 50.0, 150.0]]))


def test_jitter_scales_with_the_box_side_and_is_capped():
    torch.manual_seed(0)
    n = 4000
    boxes = torch.tensor([[400.0, 400.0, 440.0, 420.0], [100.0, 100.0, 900.0, 900.0]]).repeat_interleave(n, 0)
    wh = torch.tensor([[1000.0, 1000.0]]).expand(2 * n, 2)
    delta = jitter_boxes(boxes, 0.1, wh) - boxes
    small, large = delta[:n].std(0), delta[n:].std(0)
    # std 10% of the side: 4 px along x (width 40), 2 px along y (height 20); the 800 px box hits the 20 px cap
    assert torch.allclose(small, torch.tensor([4.0, 2.0, 4.0, 2.0]), rtol=0.1)
    assert torch.allclose(large, torch.full((4,), 20.0), rtol=0.1)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 2.0])
def test_jittered_boxes_stay_valid_inside_their_image(fraction):
    torch.manual_seed(1)
    out = jitter_boxes(BOXES.repeat(50, 1), fraction, IMAGE_WH.repeat(50, 1))
    assert (out[:, 0] <= out[:, 2]).all() and (out[:, 1] <= out[:, 3]).all() and (out >= 0).all()
    assert (out[:, 0::2] <= IMAGE_WH.repeat(50, 1)[:, :1]).all() and (out[:, 1::2] <= IMAGE_WH.repeat(50, 1)[:, 1:]).all()
    if fraction == 0.0:
        assert torch.equal(out, BOXES.repeat(50, 1))


def test_jitter_follows_the_torch_seed():
    torch.manual_seed(2)
    a = jitter_boxes(BOXES, 0.2, IMAGE_WH)
    torch.manual_seed(2)
    assert torch.equal(a, jitter_boxes(BOXES, 0.2, IMAGE_WH))
    assert not torch.equal(a, jitter_boxes(BOXES, 0.2, IMAGE_WH))
