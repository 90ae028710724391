"""DatasetMapper: the model-input contract, augmentation geometry, decoding, determinism."""
import numpy as np
import pytest
import torch
from PIL import Image

from fixture_files import truncate_file, write_image
from pixelllm_d2.data import DataError, DatasetCatalog, DatasetMapper, ImageReadError, MetadataCatalog, read_image
from pixelllm_d2.data.datasets.shapes_text import vocabulary
from pixelllm_d2.data.transforms import resize_crop_flip
from pixelllm_d2.structures import BoxMode

RED, GREEN, BLUE, GRAY = (230, 20, 20), (20, 200, 20), (20, 20, 230), (128, 128, 128)


def _scene(tmp_path, h=120, w=180):
    """A gray image with a red rectangle [30, 20, 90, 60], a green triangle, and a blue square [130, 70, 170, 110]."""
    img = np.full((h, w, 3), GRAY, dtype=np.uint8)
    img[20:60, 30:90] = RED
    tri = [[100.0, 10.0], [160.0, 10.0], [100.0, 55.0]]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    inside = (xx >= 100) & (yy >= 10) & ((xx - 100) / 60 + (yy - 10) / 45 <= 1)
    img[inside] = GREEN
    img[70:110, 130:170] = BLUE
    return write_image(tmp_path / "scene.png", img), tri, (h, w)


def _erode(m: torch.Tensor) -> torch.Tensor:
    return ~torch.nn.functional.max_pool2d((~m)[None, None].float(), 3, 1, 1)[0, 0].bool()


def _colour_fraction(image, box, colour, shrink=2):
    """Fraction of the pixels strictly inside `box` (shrunk by `shrink` px) of `colour` (+-40 per channel)."""
    x0, y0, x1, y1 = [int(round(v)) for v in box]
    patch = image[:, y0 + shrink:y1 - shrink, x0 + shrink:x1 - shrink].permute(1, 2, 0).int()
    if patch.numel() == 0:
        return 1.0
    return float((patch - torch.tensor(colour)).abs().le(40).all(-1).float().mean())


@pytest.mark.parametrize("seed", range(8))
def test_region_augmentation_keeps_boxes_on_their_pixels(tmp_path, cfg, seed):
    file_name, _, (h, w) = _scene(tmp_path)
    cfg.INPUT.REGION.SCALE_RANGE = [0.5, 2.5]
    cfg.INPUT.REGION.HFLIP = True
    d = {"file_name": file_name, "image_id": 1, "height": h, "width": w, "annotations": [
        {"bbox": [30.0, 20.0, 90.0, 60.0], "bbox_mode": BoxMode.XYXY_ABS, "caption": "red box", "id": 1},
        {"bbox": [130.0, 70.0, 170.0, 110.0], "bbox_mode": BoxMode.XYXY_ABS, "caption": "blue box", "id": 2}]}
    out = DatasetMapper(cfg, is_train=True, task="region")(d, np.random.default_rng(seed))
    assert max(out["image"].shape[1:]) <= 128 and out["image"].dtype == torch.uint8
    colours = {1: RED, 2: BLUE}
    assert len(out["query_meta"]) >= 1
    for box, meta in zip(out["prompt_boxes"].tolist(), out["query_meta"]):
        assert 0 <= box[0] < box[2] <= out["image"].shape[2] and 0 <= box[1] < box[3] <= out["image"].shape[1]
        assert _colour_fraction(out["image"], box, colours[meta["region_id"]]) > 0.95


@pytest.mark.parametrize("seed", range(6))
def test_refer_masks_and_boxes_follow_the_pixels(tmp_path, cfg, seed):
    file_name, tri, (h, w) = _scene(tmp_path)
    cfg.INPUT.REFER.SCALE_RANGE = [0.6, 2.0]
    cfg.INPUT.REFER.HFLIP = True
    polygon = [float(v) for p in tri for v in p]
    d = {"file_name": file_name, "image_id": 1, "height": h, "width": w, "annotations": [
        {"bbox": [100.0, 10.0, 160.0, 55.0], "bbox_mode": BoxMode.XYXY_ABS, "segmentation": [polygon],
         "sentences": ["green triangle"], "sent_ids": [5], "ref_id": 9, "ann_id": 3, "category_id": 1}]}
    out = DatasetMapper(cfg, is_train=True, task="refer")(d, np.random.default_rng(seed))
    assert len(out["query_meta"]) == 1  # a crop never loses the only object (falls back to the plain resize)
    mask = out["gt_masks"][0]
    assert mask.shape == out["image"].shape[1:] and mask.dtype == torch.bool and mask.sum() > 20
    green = (out["image"].permute(1, 2, 0).int() - torch.tensor(GREEN)).abs().le(40).all(-1)
    # Away from the outline (1 px, where resampling blends colours) mask and green pixels coincide.
    assert green[_erode(mask)].float().mean() > 0.98
    assert mask[_erode(green)].float().mean() > 0.98
    x0, y0, x1, y1 = out["ref_boxes"][0].tolist()
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert abs(xs.min().item() - x0) <= 2 and abs(ys.min().item() - y0) <= 2
    assert abs(xs.max().item() + 1 - x1) <= 2 and abs(ys.max().item() + 1 - y1) <= 2
    assert out["query_meta"] == [{"ref_id": 9, "sent_id": 5, "sentence": "green triangle", "ann_id": 3,
                                  "category_id": 1}]
    np.testing.assert_allclose(out["prompt_boxes"][0].tolist(), [0, 0, out["image"].shape[2], out["image"].shape[1]])


@pytest.mark.parametrize("seed", range(6))
def test_points_follow_the_pixels(seed):
    img = np.full((90, 150, 3), 255, dtype=np.uint8)
    dots = np.array([[20.5, 30.5], [140.5, 10.5], [75.5, 80.5]])
    for x, y in dots:
        img[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3] = 0
    rng = np.random.default_rng(seed)
    tfms, h, w = resize_crop_flip(90, 150, 96, rng, (1.0, 2.0), flip=bool(seed % 2))
    out = tfms.apply_image(img)
    assert out.shape[:2] == (h, w)
    for x, y in tfms.apply_coords(dots.copy()):
        if 1 <= x < w - 1 and 1 <= y < h - 1:
            assert out[int(y), int(x)].max() < 100  # still on the dark dot


def test_trace_token_boxes_follow_the_pixels(tmp_path, cfg):
    file_name, _, (h, w) = _scene(tmp_path)
    cfg.INPUT.TRACE.SCALE_RANGE = [1.2, 2.0]
    red = [30 / w, 20 / h, 90 / w, 60 / h]
    blue = [130 / w, 70 / h, 170 / w, 110 / h]
    d = {"file_name": file_name, "image_id": 1, "height": h, "width": w, "narratives": [{
        "caption": "a red shape and a blue square", "annotator_id": "0", "utterances": [
            {"utterance": "a red shape", "start_time": 0, "end_time": 1, "box": red, "center": [0.3, 0.3],
             "points": []},
            {"utterance": "and a blue square", "start_time": 1, "end_time": 2, "box": blue, "center": [0.8, 0.7],
             "points": []}]}]}
    cfg.INPUT.TRACE_ALIGNMENT = "timestamp"
    mapper = DatasetMapper(cfg, is_train=True, task="trace")
    for seed in range(5):
        out = mapper(d, np.random.default_rng(seed))
        ids, boxes = out["target_ids"][0], out["token_boxes"][0]
        n = int((ids != 0).sum())  # text tokens + EOS
        assert n == 8 and (boxes[n - 1:] == 0).all()  # EOS and padding: no target
        for t, colour in zip(range(n - 1), [RED] * 3 + [BLUE] * 4):
            box = boxes[t].tolist()
            if box[2] - box[0] > 6 and box[3] - box[1] > 6:  # not cropped to a sliver
                assert _colour_fraction(out["image"], box, colour) > 0.9


def test_no_flip_when_text_names_left_or_right(tmp_path, cfg):
    file_name, _, (h, w) = _scene(tmp_path)
    cfg.INPUT.REFER.SCALE_RANGE = [1.0, 1.0]
    cfg.INPUT.REFER.HFLIP = True
    plain = DatasetMapper(cfg, is_train=False, task="refer")
    train = DatasetMapper(cfg, is_train=True, task="refer")

    def refer_dict(sentence):
        return {"file_name": file_name, "image_id": 1, "height": h, "width": w, "annotations": [
            {"bbox": [30.0, 20.0, 90.0, 60.0], "bbox_mode": BoxMode.XYXY_ABS, "sentences": [sentence],
             "sent_ids": [0], "ref_id": 0, "ann_id": 0, "category_id": 1}]}

    reference = plain(refer_dict("x"))["image"]
    flips = {s: sum(not torch.equal(train(refer_dict(s), np.random.default_rng(k))["image"], reference)
                    for k in range(12)) for s in ["the red box", "the box on the Left", "right one"]}
    assert flips["the red box"] > 0 and flips["the box on the Left"] == 0 and flips["right one"] == 0


@pytest.mark.parametrize("task", ["trace", "refer", "densecap", "region", "caption"])
def test_contract_on_shapes(shapes_root, cfg, task):
    name = {"trace": "shapes_ln_val", "refer": "shapes_refcoco_val", "densecap": "shapes_vg_val",
            "region": "shapes_vg_loca_val", "caption": "shapes_captions_val"}[task]
    assert MetadataCatalog.get(name).task == task
    d = DatasetCatalog.get(name)[0]
    for is_train in (True, False):
        out = DatasetMapper(cfg, is_train=is_train, task=task)(d, np.random.default_rng(0))
        img = out["image"]
        q = len(out["query_meta"])
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        if not is_train:
            assert max(img.shape[1:]) == cfg.INPUT.IMAGE_SIZE
        assert (out["height"], out["width"], out["task"]) == (d["height"], d["width"], task)
        assert out["prompt_boxes"].shape == (q, 4) and out["prompt_boxes"].dtype == torch.float32
        assert out["context_ids"].shape == (q, 32) and out["context_ids"].dtype == torch.int64
        has_target = is_train or task in ("trace", "refer")
        assert ("target_ids" in out) == (has_target and task != "densecap")
        if "target_ids" in out:
            assert out["target_ids"].shape == (q, 40)
            assert ((out["target_ids"] == 1).sum(1) == 1).all()  # one EOS per row
        if task == "trace":
            assert out["token_boxes"].shape == (q, 40, 4)
            assert (out["token_boxes"][out["target_ids"] <= 1] == 0).all()
            assert (out["token_boxes"][out["target_ids"] > 1].sum(-1) > 0).all()
        if task == "refer":
            assert out["ref_boxes"].shape == (q, 4) and out["gt_masks"].shape == (q,) + img.shape[1:]
        if task == "densecap":
            assert q == 1 and out["gt_boxes"].shape[0] == out["gt_target_ids"].shape[0] == len(d["annotations"])
        if task in ("caption", "trace", "refer", "densecap"):
            assert (out["prompt_boxes"] == torch.tensor([0.0, 0.0, img.shape[2], img.shape[1]])).all()
        if task == "caption" and not is_train:
            assert q == 1 and out["query_meta"][0]["captions"] == d["captions"]
        if not is_train and task in ("refer", "region"):
            expected = sum(len(a["sentences"]) for a in d["annotations"]) if task == "refer" else len(d["annotations"])
            assert q == expected  # every query at test time


def test_prompts_and_texts_tokenize_without_unknown(shapes_root, cfg):
    mapper = DatasetMapper(cfg, is_train=False, task="refer")
    tok = mapper.tokenizer
    for p in cfg.MODEL.PIXELLLM.PROMPTS.values():
        assert tok.unk_id not in tok.encode(p, 64), p
    assert tok.unk_id in tok.encode("zebra", 8)  # the check can fail
    assert len(tok) >= len(vocabulary())


def test_mapper_is_a_pure_function_of_the_rng(shapes_root, cfg):
    d = DatasetCatalog.get("shapes_refcoco_train")[3]
    mapper = DatasetMapper(cfg, is_train=True, task="refer")
    a, b = mapper(d, np.random.default_rng(7)), mapper(d, np.random.default_rng(7))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["target_ids"], b["target_ids"])
    assert a["query_meta"] == b["query_meta"]
    assert d == DatasetCatalog.get("shapes_refcoco_train")[3]  # the dict is not modified


def test_max_queries_train(shapes_root, cfg):
    cfg.INPUT.MAX_QUERIES_TRAIN = 2
    for d in DatasetCatalog.get("shapes_refcoco_train")[:5]:
        out = DatasetMapper(cfg, is_train=True, task="refer")(d, np.random.default_rng(0))
        assert len(out["query_meta"]) <= 2


def test_decoding_exif_grayscale_rgba(tmp_path):
    rgba = Image.new("RGBA", (30, 20), (10, 20, 30, 128))
    rgba.save(tmp_path / "a.png")
    assert read_image(str(tmp_path / "a.png")).shape == (20, 30, 3)
    Image.new("L", (30, 20), 77).save(tmp_path / "g.jpg")
    g = read_image(str(tmp_path / "g.jpg"))
    assert g.shape == (20, 30, 3) and abs(int(g[5, 5, 0]) - 77) <= 2
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 30x20, shown 20x30
    Image.new("RGB", (30, 20), (200, 0, 0)).save(tmp_path / "r.jpg", exif=exif)
    assert read_image(str(tmp_path / "r.jpg")).shape == (30, 20, 3)


def test_unreadable_and_mismatched_images_raise_data_errors(tmp_path, cfg):
    path = write_image(tmp_path / "t.jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3)))
    truncate_file(path)
    with pytest.raises(ImageReadError, match="t.jpg: cannot read image"):
        read_image(path)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(str(tmp_path / "missing.jpg"))
    ok = write_image(tmp_path / "ok.png", np.zeros((10, 20, 3)))
    d = {"file_name": ok, "image_id": 1, "height": 20, "width": 10, "captions": ["a"]}
    with pytest.raises(DataError, match="ok.png: image is 20x10 but its dataset dict says 10x20"):
        DatasetMapper(cfg, is_train=False, task="caption")(d)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)  # 0 .. 64746
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # what Pillow gives a 16-bit grayscale PNG
    expected = np.round(ramp / 257.0).astype(np.uint8)
    for source in (str(tmp_path / "g16.png"), ramp):
        out = read_image(source)
        assert out.shape == (30, 40, 3) and out.dtype == np.uint8
        assert np.array_equal(out[:, :, 0], expected) and np.array_equal(out[:, :, 2], expected)
    assert read_image(str(tmp_path / "g16.png")).mean() == pytest.approx(expected.mean())  # not all white


def test_float_images_are_refused_by_name(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(ImageReadError, match=r"f\.tiff: cannot read image: 32-bit float images are not supported"):
        read_image(str(tmp_path / "f.tiff"))


@pytest.mark.parametrize("protocol", ["official", "all_narratives"])
def test_trace_evaluation_narratives_per_protocol(tmp_path, cfg, protocol):
    file_name, _, (h, w) = _scene(tmp_path)
    utterance = {"utterance": "a red shape", "start_time": 0, "end_time": 1, "box": [0.1, 0.1, 0.5, 0.5],
                 "center": [0.3, 0.3], "points": []}
    narratives = [{"caption": c, "annotator_id": str(k), "utterances": [dict(utterance, utterance=c)]}
                  for k, c in enumerate(["a red shape", "a blue square", "a green triangle"])]
    cfg.TEST.TRACE_PROTOCOL = protocol
    mapper = DatasetMapper(cfg, is_train=False, task="trace")
    picked = {}
    for image_id in range(6):
        d = {"file_name": file_name, "image_id": image_id, "height": h, "width": w, "narratives": narratives}
        meta = mapper(d)["query_meta"]
        assert meta == mapper(d)["query_meta"]  # the same in every run
        picked[image_id] = [m["narrative_index"] for m in meta]
    if protocol == "official":  # one narrative per image, drawn with a generator seeded by the image id
        assert all(len(v) == 1 for v in picked.values()) and len({v[0] for v in picked.values()}) > 1
    else:
        assert all(v == [0, 1, 2] for v in picked.values())
