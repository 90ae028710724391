import numpy as np
import pytest
import torch

from pixelllm_d2.utils.visualizer import PALETTE, Visualizer, save_image

from ..images import expected_marker_colors

WORDS = ["a", "red", "circle", "next", "to", "a", "blue", "square"]


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _spread_points(n, h, w, seed=0):
    # n points at least 40 px apart in both the original and the picture frame, away from the border.
    rng = np.random.default_rng(seed)
    pts = []
    while len(pts) < n:
        p = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
        if all(np.hypot(*(p - q)) > 0.15 * min(h, w) for q in pts):
            pts.append(p)
    return np.array(pts)


@pytest.mark.parametrize("hw", [(48, 64), (300, 451), (700, 500)])
def test_each_word_marker_is_at_its_point(hw):
    h, w = hw
    pts = _spread_points(len(WORDS), h, w)
    vis = Visualizer(_image(h, w))
    vis.draw_trace(WORDS, torch.tensor(pts, dtype=torch.float32))
    out = vis.get_image()
    assert vis.scale == pytest.approx(max(1.0, 512 / max(h, w)))
    for j, (x, y) in enumerate(np.round(pts * vis.scale).astype(int)):
        assert tuple(out[y, x]) == PALETTE[j], WORDS[j]
        # the whole disc of radius - 1 around the point carries the word's colour
        yy, xx = np.mgrid[-vis.radius + 1 : vis.radius, -vis.radius + 1 : vis.radius]
        disc = np.hypot(yy, xx) <= vis.radius - 1
        assert (out[y + yy[disc], x + xx[disc]] == PALETTE[j]).all()


def test_later_words_are_drawn_over_earlier_ones():
    vis = Visualizer(_image(128, 128))
    pts = np.array([[20.0, 20.0], [20.5, 20.0], [100.0, 100.0]])  # words 0 and 1 at the same place
    vis.draw_trace(["one", "two", "three"], pts)
    out = vis.get_image()
    s = vis.scale
    assert tuple(out[int(round(20 * s)), int(round(20 * s))]) == PALETTE[1]
    assert tuple(out[int(round(100 * s)), int(round(100 * s))]) == PALETTE[2]
    assert expected_marker_colors(pts, s, vis.radius)[0] == PALETTE[1]


def test_trace_path_connects_consecutive_words():
    img = np.full((512, 512, 3), 128, np.uint8)
    vis = Visualizer(img)
    vis.draw_trace(["left", "right"], [[100.0, 300.0], [400.0, 300.0]])
    out = vis.get_image()
    assert (out[300, 200:300] > 200).all()  # white path between the two markers
    assert (out[296:300, 200:300, 0].min(axis=0) < 80).all() and (out[301:305, 200:300, 0].min(axis=0) < 80).all()  # dark edges
    assert (out[280:290, 200:300] == 128).all()  # nothing away from it


def test_caption_output_adds_a_strip_below_and_keeps_the_frame():
    h, w = 300, 451
    img = _image(h, w)
    pts = _spread_points(3, h, w, seed=1)
    out_dict = {
        "task": "caption", "captions": ["a red circle"], "pred_boxes": torch.tensor([[0.0, 0, w, h]]),
        "scores": torch.tensor([-0.5]), "words": [["a", "red", "circle"]], "word_points": [torch.tensor(pts)],
    }
    vis = Visualizer(img)
    out = vis.draw_outputs(out_dict)
    ch, cw = int(round(h * vis.scale)), int(round(w * vis.scale))
    assert out.shape[1] == cw and out.shape[0] > ch
    assert (out[ch:] == 255).mean() > 0.8  # white strip with black text
    assert (out[ch:] == 0).any()
    for j, (x, y) in enumerate(np.round(pts * vis.scale).astype(int)):
        assert tuple(out[y, x]) == PALETTE[j]
    again = Visualizer(img).draw_outputs(out_dict)
    assert np.array_equal(out, again)  # deterministic


def test_mask_is_blended_with_alpha():
    img = np.full((600, 600, 3), 100, np.uint8)
    mask = np.zeros((600, 600), bool)
    mask[100:300, 200:500] = True
    vis = Visualizer(img)
    vis.draw_mask(mask, (200, 0, 50), alpha=0.5)
    out = vis.get_image()
    assert tuple(out[200, 350]) == (150, 50, 75)  # inside: (100 + color) / 2
    assert tuple(out[450, 350]) == (100, 100, 100)  # outside untouched
    assert tuple(out[100, 350]) == (200, 0, 50)  # contour in the mask colour


def test_refer_and_region_outputs_draw_boxes_and_points():
    img = np.full((400, 600, 3), 200, np.uint8)
    mask = torch.zeros(1, 400, 600, dtype=torch.bool)
    mask[0, 110:190, 60:140] = True
    refer = {
        "task": "refer", "captions": ["the red circle"], "pred_boxes": torch.tensor([[50.0, 100.0, 150.0, 200.0]]),
        "scores": torch.ones(1), "words": [["the", "red", "circle"]], "word_points": [torch.zeros(3, 2)],
        "pred_masks": mask, "mask_scores": torch.tensor([0.9]),
    }
    vis = Visualizer(img)
    # the mask colour is the palette's farthest from the object's own (light grey here: maroon)
    color = Visualizer(img).contrasting_color(mask[0])
    assert color == max(PALETTE, key=lambda c: np.linalg.norm(np.array(c) - 200.0)) == (128, 0, 0)
    out = vis.draw_outputs(refer, texts=["the red circle"])
    assert tuple(out[150, 50]) == color and tuple(out[200, 100]) == color  # box edges
    inside = np.round(0.55 * 200 + 0.45 * np.array(color)).astype(np.uint8)
    assert tuple(out[150, 100]) == tuple(inside)
    region = {
        "task": "region", "captions": ["one", "two"], "pred_boxes": torch.tensor([[10.0, 10.0, 100.0, 100.0], [300.0, 200.0, 500.0, 390.0]]),
        "scores": torch.zeros(2), "words": [["one"], ["two"]], "word_points": [torch.zeros(1, 2)] * 2,
    }
    out = Visualizer(img).draw_outputs(region)
    assert tuple(out[50, 10]) == PALETTE[0] and tuple(out[300, 500]) == PALETTE[1]
    pts = {**region, "captions": ["one"], "pred_boxes": torch.tensor([[0.0, 0, 600, 400]])}
    out = Visualizer(img).draw_outputs(pts, points=[[300.0, 200.0]])
    assert tuple(out[200, 300]) == PALETTE[0]  # the cross's centre


def test_densecap_output_keeps_the_best_regions():
    img = np.full((200, 200, 3), 200, np.uint8)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0], [100.0, 100.0, 150.0, 150.0], [60.0, 10.0, 90.0, 40.0]])
    out = {
        "task": "densecap", "captions": ["low", "high", "mid"], "pred_boxes": boxes, "scores": torch.tensor([0.1, 0.9, 0.5]),
        "words": [["low"], ["high"], ["mid"]], "word_points": [torch.zeros(1, 2)] * 3,
    }
    vis = Visualizer(img)
    picture = vis.draw_outputs(out, max_regions=2)
    def at(x, y):
        return tuple(picture[int(round(y * vis.scale)), int(round(x * vis.scale))])

    assert at(100, 125) == PALETTE[0]  # best box first
    assert at(60, 25) == PALETTE[1]
    assert at(10, 30) == (200, 200, 200)  # the lowest score is dropped
    assert [line for line, _ in vis.lines] == ["1: high (0.90)", "2: mid (0.50)"]


def test_rejects_bad_images_and_mismatched_traces():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB"):
        Visualizer(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="2 words but 3 points"):
        Visualizer(_image(10, 10)).draw_trace(["a", "b"], np.zeros((3, 2)))


def test_save_image_round_trips(tmp_path):
    import cv2

    img = _image(20, 30)
    path = str(tmp_path / "sub" / "x.png")
    save_image(path, img)
    assert np.array_equal(cv2.imread(path)[:, :, ::-1], img)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]  # no temporary file left behind


def test_mask_colour_contrasts_with_its_object_and_labels_do_not_collide():
    img = np.zeros((300, 300, 3), np.uint8)
    img[50:150, 50:150] = (60, 180, 75)  # a green object: a green mask would vanish on it
    mask = np.zeros((300, 300), bool)
    mask[50:150, 50:150] = True
    vis = Visualizer(img)
    color = vis.contrasting_color(mask)
    assert np.linalg.norm(np.array(color) - (60, 180, 75)) > 200 and color != PALETTE[1]
    assert vis.contrasting_color(mask, used=[color]) != color
    for _ in range(3):  # the same anchor three times: each label lands below the previous one
        vis.draw_text("label", (10, 30), PALETTE[0])
    boxes = vis._labels
    assert len(boxes) == 3 and all(a[3] <= b[1] for a, b in zip(boxes, boxes[1:]))
