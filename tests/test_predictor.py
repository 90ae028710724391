import os

import numpy as np
import pytest
import torch
from PIL import Image

from pixelllm_d2.data.transforms import resize_crop_flip
from pixelllm_d2.predictor import PixelLLMPredictor, read_image

from .images import draw_shapes_scene, one_cpu_thread, real_photos
from .modeling.tiny import tiny_cfg

pytestmark = pytest.mark.usefixtures(one_cpu_thread.__name__)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return PixelLLMPredictor(tiny_cfg())


@pytest.fixture(scope="module")
def photos():
    return real_photos()


def _padded(ids, n):
    return ids + [0] * (n - len(ids))


def _ids(predictor, text, n=0):
    return predictor.tokenizer.encode(text, n or predictor.model.max_context_len)


def _inside(points, W, H):
    p = torch.as_tensor(points).reshape(-1, 2)
    return bool(((p >= 0).all() and (p[:, 0] <= W).all() and (p[:, 1] <= H).all()).item())


# ------------------------------------------------------------------------------------------------ reading images
def test_read_image_sources_agree(tmp_path, photos):
    rgb = photos["chelsea"]
    path = str(tmp_path / "chelsea.png")
    Image.fromarray(rgb).save(path)
    assert np.array_equal(read_image(path), rgb)
    assert np.array_equal(read_image(Image.fromarray(rgb)), rgb)
    assert np.array_equal(read_image(rgb[:, :, ::-1].copy(), input_format="BGR"), rgb)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    assert np.array_equal(read_image(rgba), rgb)
    assert np.array_equal(read_image(rgba[:, :, [2, 1, 0, 3]], input_format="BGR"), rgb)
    gray = rgb[:, :, 0]
    for g in (gray, gray[:, :, None], Image.fromarray(gray)):
        out = read_image(g)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        assert np.array_equal(out[:, :, 2], gray)


def test_read_image_applies_exif_orientation(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = (255, 0, 0)  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(img).save(path, exif=exif, quality=95)
    out = read_image(path)
    assert out.shape == (40, 20, 3)
    assert out[:10, :, 0].mean() > 200 and out[-10:, :, 0].mean() < 50  # the red band is now on top


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda d: os.path.join(d, "missing.jpg"), FileNotFoundError, r"missing\.jpg: cannot read image: file does not exist"),
        (lambda d: _write(d, "broken.jpg", b"not an image"), ValueError, r"broken\.jpg: cannot read image"),
        (lambda d: np.zeros((8, 8, 3), np.float32), TypeError, "must be uint8"),
        (lambda d: np.zeros((8, 8, 2), np.uint8), ValueError, r"got shape \(8, 8, 2\)"),
        (lambda d: np.zeros((0, 8, 3), np.uint8), ValueError, "got shape"),
        (lambda d: [[1, 2], [3, 4]], TypeError, "got list"),
    ],
)
def test_read_image_errors_name_the_input(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        read_image(make(str(tmp_path)))


def _write(folder, name, data):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_read_image_rejects_unknown_channel_order():
    with pytest.raises(ValueError, match="input_format"):
        read_image(np.zeros((4, 4, 3), np.uint8), input_format="RGBA")


@pytest.mark.parametrize("hw, size, expected", [((512, 512), 64, (64, 64)), ((400, 600), 64, (43, 64)), ((300, 451), 64, (43, 64)), ((10, 20), 64, (32, 64)), ((1, 500), 64, (1, 64))])
def test_resize_longest_side(hw, size, expected):
    tfms, h, w = resize_crop_flip(*hw, size)  # the one resizer: the test mapper's and the predictor's
    out = tfms.apply_image(np.full(hw + (3,), 100, np.uint8))
    assert (h, w) == expected and out.shape == expected + (3,) and out.dtype == np.uint8
    assert (out == 100).all()  # a flat image stays flat: no padding, no border


# ------------------------------------------------------------------------------------------------ model inputs
def test_prepare_caption_uses_the_trace_prompt(predictor, photos):
    x = predictor.prepare(photos["coffee"], "caption")
    assert x["image"].dtype == torch.uint8 and x["image"].shape == (3, 43, 64)
    assert (x["height"], x["width"], x["task"]) == (400, 600, "caption")
    assert torch.equal(x["prompt_boxes"], torch.tensor([[0.0, 0.0, 64.0, 43.0]]))
    width = predictor.model.max_context_len  # padded as the test mapper pads
    assert x["context_ids"].tolist() == [_padded(_ids(predictor, "A long image caption: "), width)]
    assert "target_ids" not in x and "prompt_points" not in x
    short = PixelLLMPredictor(tiny_cfg(), caption_prompt="caption").prepare(photos["coffee"], "caption")
    assert short["context_ids"].tolist() == [_padded(_ids(predictor, "A short image caption: "), width)]


def test_prepare_region_scales_boxes_and_points(predictor, photos):
    s = torch.tensor([64 / 600, 43 / 400])  # per axis: the resized height is rounded (42.67 -> 43)
    x = predictor.prepare(photos["coffee"], "region", boxes=[[60, 30, 300, 330], [0, 0, 600, 400]])
    assert torch.allclose(x["prompt_boxes"], torch.tensor([[60, 30, 300, 330], [0, 0, 600, 400]]) * s.repeat(2), atol=1e-4)
    assert x["context_ids"].tolist() == [_padded(_ids(predictor, "an object of "), predictor.model.max_context_len)] * 2
    x = predictor.prepare(photos["coffee"], "region", boxes=[60, 30, 300, 330])  # a single (4,) box
    assert x["prompt_boxes"].shape == (1, 4)
    x = predictor.prepare(photos["coffee"], "region", points=[[300, 200], [120, 40]])
    assert torch.allclose(x["prompt_points"], torch.tensor([[[300, 200], [120, 40]]]) * s, atol=1e-4)
    assert x["prompt_point_labels"].tolist() == [[1, 1]] and x["context_ids"].shape[0] == 1
    assert "prompt_boxes" not in x


def test_prepare_refer_builds_context_and_target(predictor, photos):
    x = predictor.prepare(photos["astronaut"], "refer", text=["the red circle", "  a   blue square "])
    ctx = [_ids(predictor, "where is the red circle"), _ids(predictor, "where is a blue square")]
    tgt = [_ids(predictor, "the red circle", 40), _ids(predictor, "a blue square", 40)]
    assert x["context_ids"].tolist() == [_padded(c, predictor.model.max_context_len) for c in ctx]
    assert x["target_ids"].tolist() == [_padded(t, predictor.model.max_text_len) for t in tgt]
    assert torch.equal(x["prompt_boxes"], torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 2))
    dense = predictor.prepare(photos["astronaut"], "densecap")
    assert "gt_boxes" not in dense and "target_ids" not in dense  # the image alone (and the detector's prompt)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="region", boxes=[[10, 10, 5, 20]]), r"astro: boxes .*x1 < x0"),
        (dict(task="region", boxes=[[10, 10, 600, 20]]), r"astro: boxes .*outside the 512x512 image"),
        (dict(task="region", boxes=[[-3, 10, 60, 20]]), r"outside"),
        (dict(task="region", boxes=[1, 2, 3]), r"astro: boxes must have shape \(N, 4\)"),
        (dict(task="region", boxes=[]), r"astro: boxes must have shape \(N, 4\) XYXY with at least one row"),
        (dict(task="region", boxes=[["a", 1, 2, 3]]), r"astro: boxes must be numbers"),
        (dict(task="region", points=[[10, 600]]), r"astro: points outside the 512x512 image"),
        (dict(task="region", points=[1, 2, 3]), r"astro: points must have shape \(P, 2\)"),
        (dict(task="region"), r"astro: task 'region' needs either boxes or points"),
        (dict(task="region", boxes=[[0, 0, 5, 5]], points=[[1, 1]]), r"needs either boxes or points \(one of them\)"),
        (dict(task="refer", text=""), r"astro: empty referring expression ''"),
        (dict(task="refer", text=["the red circle", "   "]), r"empty referring expression"),
        (dict(task="refer", text=[]), r"at least one referring expression"),
        (dict(task="refer"), r"astro: task 'refer' needs a referring expression"),
        (dict(task="caption", text="hello"), r"astro: task 'caption' takes no text"),
        (dict(task="densecap", boxes=[[0, 0, 5, 5]]), r"task 'densecap' takes no boxes"),
        (dict(task="trace"), r"astro: task must be one of"),
    ],
)
def test_prepare_rejects_bad_prompts(predictor, photos, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor.prepare(photos["astronaut"], name="astro", **kwargs)


# ------------------------------------------------------------------------------------------------ predictions
def test_caption_gives_a_location_per_word(predictor, photos):
    out = predictor(photos["chelsea"])
    assert out["task"] == "caption" and len(out["captions"]) == 1
    assert torch.equal(out["pred_boxes"], torch.tensor([[0.0, 0.0, 451.0, 300.0]]))
    words, pts, boxes = out["words"][0], out["word_points"][0], out["word_boxes"][0]
    assert len(words) >= 1 and pts.shape == (len(words), 2) and boxes.shape == (len(words), 4)
    assert " ".join(words) == out["captions"][0]
    assert _inside(pts, 451, 300) and _inside(boxes.reshape(-1, 2), 451, 300)


def test_region_boxes_and_points(predictor, photos):
    boxes = [[60.0, 30.0, 300.0, 330.0], [400.0, 100.0, 600.0, 400.0]]
    out = predictor(photos["coffee"], task="region", boxes=boxes)
    assert out["task"] == "region" and len(out["captions"]) == 2
    assert torch.allclose(out["pred_boxes"], torch.tensor(boxes), atol=1e-3)  # the prompts, back in original pixels
    out = predictor(photos["coffee"], task="region", points=[[300, 200], [320, 210]])
    assert len(out["captions"]) == 1 and torch.equal(out["pred_boxes"], torch.tensor([[0.0, 0.0, 600.0, 400.0]]))


def test_refer_box_and_mask(predictor):
    scene, _ = draw_shapes_scene()
    out = predictor(scene, task="refer", text=["the red circle", "the blue square"])
    assert out["captions"] == ["the red circle", "the blue square"]
    assert out["words"] == [["the", "red", "circle"], ["the", "blue", "square"]]
    assert out["pred_boxes"].shape == (2, 4) and _inside(out["pred_boxes"].reshape(-1, 2), 256, 192)
    assert (out["pred_boxes"][:, 2:] >= out["pred_boxes"][:, :2]).all()
    assert out["pred_masks"].shape == (2, 192, 256) and out["pred_masks"].dtype == torch.bool
    assert out["mask_scores"].shape == (2,) and torch.equal(out["scores"], torch.ones(2))


def test_densecap_needs_the_densecap_head(predictor, photos):
    with pytest.raises(ValueError, match="without MODEL.DENSECAP_ON"):
        predictor(photos["astronaut"], task="densecap")


def test_densecap_with_the_head():
    pytest.importorskip("pixelllm_d2.modeling.roi_heads", reason="dense-captioning head not merged yet")
    torch.manual_seed(0)
    out = PixelLLMPredictor(tiny_cfg("MODEL.DENSECAP_ON", True))(draw_shapes_scene()[0], task="densecap")
    n = len(out["pred_boxes"])
    assert out["task"] == "densecap" and out["scores"].shape == (n,) and len(out["captions"]) == n
    assert _inside(out["pred_boxes"].reshape(-1, 2), 256, 192)


def test_batched_predict_equals_single_calls(predictor, photos, tmp_path):
    path = str(tmp_path / "astronaut.png")
    Image.fromarray(photos["astronaut"]).save(path)
    bgr = [photos[k][:, :, ::-1].copy() for k in ("coffee", "chelsea")]
    batched = predictor.predict([path] + bgr, input_format="BGR")  # a path's channel order comes from its file
    singles = [predictor(photos[k]) for k in ("astronaut", "coffee", "chelsea")]
    for b, s in zip(batched, singles):
        assert b["captions"] == s["captions"]
        assert torch.allclose(b["word_points"][0], s["word_points"][0], atol=1e-3)
    boxes = [None, [[60, 30, 300, 330]], [[0, 0, 10, 10], [5, 5, 100, 100]]]
    outs = predictor.predict([photos["astronaut"], photos["coffee"], photos["chelsea"]], task="region", boxes=[[[0, 0, 50, 50]]] + boxes[1:])
    assert [len(o["captions"]) for o in outs] == [1, 1, 2]
    with pytest.raises(ValueError, match=r"predict: boxes must hold one entry per image \(2\), got 3"):
        predictor.predict([photos["astronaut"], photos["coffee"]], task="region", boxes=boxes)
    with pytest.raises(ValueError, match="image 1: task 'region' needs either boxes or points"):
        predictor.predict([photos["astronaut"], photos["coffee"]], task="region", boxes=[[[0, 0, 5, 5]], None])


@pytest.mark.parametrize("ext", [".safetensors", ".pth"])
def test_loads_model_weights(tmp_path, ext):
    torch.manual_seed(1)
    source = PixelLLMPredictor(tiny_cfg()).model
    path = str(tmp_path / f"model_final{ext}")
    state = source.state_dict()
    if ext == ".safetensors":
        from safetensors.torch import save_model

        save_model(source, path)  # drops the duplicate names of tied tensors
    else:
        torch.save({"model": state, "iteration": 7}, path)
    torch.manual_seed(2)
    loaded = PixelLLMPredictor(tiny_cfg("MODEL.WEIGHTS", path)).model
    assert not loaded.training
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_refuses_pickled_objects(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "payload": os.getcwd}, path)  # a function: not tensor-only
    with pytest.raises(ValueError, match="weights_only=True"):
        PixelLLMPredictor(tiny_cfg("MODEL.WEIGHTS", path))


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda sd: {f"detector.{k}": v for k, v in sd.items()}, r'supplies only 0\.0% .*extra prefix "detector\."'),
        (lambda sd: {**sd, "location_head.mlp.0.weight": sd["location_head.mlp.0.weight"][:1]}, "another shape"),
        (lambda sd: {**sd, "location_head.mlp.0.weight": sd["location_head.mlp.0.weight"] * float("nan")}, "NaN or Inf"),
    ],
    ids=["prefixed keys", "shape", "nan"],
)
def test_refuses_weights_that_do_not_fit(tmp_path, spoil, message):
    state = PixelLLMPredictor(tiny_cfg()).model.state_dict()
    path = str(tmp_path / "w.pth")
    torch.save(spoil(state), path)
    with pytest.raises(ValueError, match=message) as info:
        PixelLLMPredictor(tiny_cfg("MODEL.WEIGHTS", path))
    assert path in str(info.value)
