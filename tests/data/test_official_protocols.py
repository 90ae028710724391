"""The official data protocols of the paper configs (issue 15): referring training without any image of a val /
test split, prompts drawn from the official pools, the Karpathy COCO split, the COCO evaluation crop, the first VG
regions."""
import json
import pickle

import numpy as np
import pytest

from fixture_files import write_image
from pixelllm_d2.config import get_cfg
from pixelllm_d2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_train_loader
from pixelllm_d2.data.datasets import load_coco_karpathy_json, register_refcoco
from pixelllm_d2.data.transforms import resize_shorter_center_crop
from pixelllm_d2.structures import BoxMode

REFER_SPLITS = ("train", "val", "testA")


@pytest.fixture
def refcoco_files(tmp_path):
    """A refer-toolkit refs pickle + instances json: images 1-6; image 3 has refs in train and val, image 5 in
    train and testA (as RefCOCO / RefCOCO+ / RefCOCOg share COCO images across their splits)."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 30} for i in range(1, 7)]
    anns = [{"id": 100 + i, "image_id": i, "bbox": [2, 2, 10, 10], "category_id": 1} for i in range(1, 7)]
    splits = {1: ["train"], 2: ["train"], 3: ["train", "val"], 4: ["val"], 5: ["train", "testA"], 6: ["train"]}
    refs, ref_id = [], 0
    for image_id, its in splits.items():
        for split in its:
            refs.append({"ref_id": ref_id, "ann_id": 100 + image_id, "image_id": image_id, "split": split,
                         "sentences": [{"sent_id": 1000 + ref_id, "sent": f"thing {ref_id}"}], "sent_ids": [1000 + ref_id]})
            ref_id += 1
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": anns}))
    (tmp_path / "refs.p").write_bytes(pickle.dumps(refs, protocol=2))
    for i in range(1, 7):
        write_image(tmp_path / f"{i}.jpg", np.zeros((30, 40, 3)))
    names = [f"fixture_refcoco_{s}" for s in REFER_SPLITS]
    for name, split in zip(names, REFER_SPLITS):
        register_refcoco(name, str(tmp_path / "refs.p"), str(tmp_path / "instances.json"), str(tmp_path), split)
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_referring_training_holds_out_every_val_and_test_image(refcoco_files, cfg):
    train, val, test = refcoco_files
    cfg.MODEL.PIXELLLM.LANGUAGE.TOKENIZER = "byt5"
    cfg.DATASETS.TRAIN = (train,)
    cfg.DATASETS.TRAIN_HOLDOUT = (val, test, "shapes_vg_val")  # another task's held-out set does not apply
    cfg.SOLVER.IMS_PER_BATCH = 2
    loader = build_train_loader(cfg)
    trained = {d["image_id"] for d in loader.stream.dicts[0]}
    assert trained == {1, 2, 6}  # images 3 and 5 have val / testA expressions: all their train expressions go
    assert {d["image_id"] for d in DatasetCatalog.get(train)} == {1, 2, 3, 5, 6}
    cfg.DATASETS.TRAIN_HOLDOUT = ()
    assert {d["image_id"] for d in build_train_loader(cfg).stream.dicts[0]} == {1, 2, 3, 5, 6}


def test_the_paper_referring_configs_hold_out_every_refcoco_val_and_test_split(repo_root):
    for config in ("refcoco_ref.yaml", "refcoco_refseg.yaml", "joint_trace_ref_densecap.yaml"):
        cfg = get_cfg()
        cfg.merge_from_file(f"{repo_root}/configs/{config}")
        evaluation = {n for n in DatasetCatalog.list() if n.startswith("refcoco") and n.endswith(("_val", "_testA", "_testB", "_test"))
                      and MetadataCatalog.get(n).task == "refer"}
        assert set(cfg.DATASETS.TRAIN_HOLDOUT) == evaluation, config
    cfg = get_cfg()
    cfg.merge_from_file(f"{repo_root}/configs/refcoco_ref.yaml")
    assert cfg.MODEL.PIXELLLM.LANGUAGE.MAX_CONTEXT_LEN == 40  # official ref stage


def test_training_prompts_are_drawn_from_the_official_pools(tmp_path, cfg):
    cfg.MODEL.PIXELLLM.LANGUAGE.TOKENIZER = "byt5"
    defaults = get_cfg()
    cfg.MODEL.PIXELLLM.TRAIN_PROMPTS.CAPTION = list(defaults.MODEL.PIXELLLM.TRAIN_PROMPTS.CAPTION)
    cfg.MODEL.PIXELLLM.PROMPTS.CAPTION = defaults.MODEL.PIXELLLM.PROMPTS.CAPTION
    assert len(cfg.MODEL.PIXELLLM.TRAIN_PROMPTS.CAPTION) == 13 and len(defaults.MODEL.PIXELLLM.TRAIN_PROMPTS.TRACE) == 11
    assert cfg.MODEL.PIXELLLM.PROMPTS.CAPTION == "A photo of "
    file_name = write_image(tmp_path / "a.png", np.zeros((20, 30, 3)))
    d = {"file_name": file_name, "image_id": 1, "height": 20, "width": 30, "captions": [f"cap {i}" for i in range(5)]}
    tok = DatasetMapper(cfg, is_train=True, task="caption").tokenizer
    decoded = set()
    mapper = DatasetMapper(cfg, is_train=True, task="caption")
    for seed in range(40):
        out = mapper(d, np.random.default_rng(seed))
        decoded |= {tok.decode(row.tolist()) for row in out["context_ids"]}
    pool = {tok.decode(tok.encode(p, 32)) for p in cfg.MODEL.PIXELLLM.TRAIN_PROMPTS.CAPTION}
    assert decoded <= pool and len(decoded) >= 10  # drawn per query from the 13
    test = DatasetMapper(cfg, is_train=False, task="caption")(d)
    assert [tok.decode(r.tolist()) for r in test["context_ids"]] == ["A photo of"]  # evaluation: the fixed prompt


def test_karpathy_split_loader(tmp_path):
    for folder, name in (("train2014", "a.jpg"), ("val2014", "b.jpg"), ("val2014", "c.jpg")):
        write_image(tmp_path / folder / name, np.zeros((30, 40, 3)))
    data = {"dataset": "coco", "images": [
        {"filepath": "train2014", "filename": "a.jpg", "cocoid": 1, "split": "train", "sentences": [{"raw": "A dog."}]},
        {"filepath": "val2014", "filename": "b.jpg", "cocoid": 2, "split": "restval", "sentences": [{"raw": "A cat."}, {"raw": " "}]},
        {"filepath": "val2014", "filename": "c.jpg", "cocoid": 3, "split": "val", "sentences": [{"raw": "A bird."}]},
    ]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    train = load_coco_karpathy_json(str(path), str(tmp_path), ("train", "restval"))
    assert [(d["image_id"], d["captions"], d["width"], d["height"]) for d in train] == [
        (1, ["A dog."], 40, 30), (2, ["A cat."], 40, 30)]
    assert train[0]["file_name"] == str(tmp_path / "train2014" / "a.jpg")
    assert [d["image_id"] for d in load_coco_karpathy_json(str(path), str(tmp_path), ("val",))] == [3]
    with pytest.raises(ValueError, match="unknown Karpathy split"):
        load_coco_karpathy_json(str(path), str(tmp_path), ("validation",))


def test_coco_caption_evaluation_is_a_centre_crop(tmp_path, cfg):
    image = np.zeros((60, 120, 3), np.uint8)
    image[:, 30:90] = 255  # the central 60 x 60 square is white
    file_name = write_image(tmp_path / "wide.png", image)
    d = {"file_name": file_name, "image_id": 1, "height": 60, "width": 120, "captions": ["x"]}
    assert get_cfg().INPUT.CAPTION.TEST_RESIZE == "shorter_crop"
    cfg.INPUT.CAPTION.TEST_RESIZE = "shorter_crop"
    out = DatasetMapper(cfg, is_train=False, task="caption")(d)
    assert tuple(out["image"].shape) == (3, 128, 128) and out["image"].float().mean() > 240  # the crop only (longest: half black)
    tfms, h, w = resize_shorter_center_crop(60, 120, 128)
    assert (h, w) == (128, 128)
    cfg.INPUT.CAPTION.TEST_RESIZE = "longest"
    assert tuple(DatasetMapper(cfg, is_train=False, task="caption")(d)["image"].shape) == (3, 64, 128)


def test_the_detector_trains_on_the_first_regions_surviving_the_crop(tmp_path, cfg):
    file_name = write_image(tmp_path / "v.png", np.zeros((100, 100, 3)))
    anns = [{"bbox": [float(x), 10.0, float(x) + 8, 18.0], "bbox_mode": BoxMode.XYXY_ABS, "caption": f"r {k}", "id": k}
            for k, x in enumerate(range(0, 90, 9))]
    d = {"file_name": file_name, "image_id": 1, "height": 100, "width": 100, "annotations": anns}
    cfg.INPUT.MAX_GT_REGIONS_TRAIN = 4
    cfg.INPUT.DENSECAP.SCALE_RANGE = [1.0, 1.0]
    cfg.INPUT.DENSECAP.HFLIP = False
    out = DatasetMapper(cfg, is_train=True, task="densecap")(d, np.random.default_rng(0))
    assert out["query_meta"][0]["region_ids"] == [0, 1, 2, 3]  # official: the first ones, in file order
    cfg.INPUT.GT_REGIONS_SELECTION = "random"
    ids = DatasetMapper(cfg, is_train=True, task="densecap")(d, np.random.default_rng(0))["query_meta"][0]["region_ids"]
    assert len(ids) == 4 and ids != [0, 1, 2, 3]
