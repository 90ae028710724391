"""build_train_loader / build_test_loader / get_detection_dataset_dicts: determinism, sharding, bad samples."""
import itertools
import logging

import numpy as np
import pytest

from fixture_files import truncate_file, write_image, write_json
from pixelllm_d2.data import (
    DataError,
    DatasetCatalog,
    MetadataCatalog,
    build_test_loader,
    build_train_loader,
    get_detection_dataset_dicts,
    register_vg_json,
)

TRAIN = ("shapes_ln_train", "shapes_refcoco_train", "shapes_vg_loca_train")


def _signature(batch):
    """What identifies a mapped sample: image, task, pixels, and drawn texts."""
    return [
        (d["image_id"], d["task"], int(d["image"].long().sum()), tuple(d["image"].shape),
         d["target_ids"].tolist() if "target_ids" in d else None)
        for d in batch
    ]


def _take(loader, n):
    it = iter(loader)
    out = [_signature(next(it)) for _ in range(n)]
    del it  # shuts the workers down before the next loader forks
    return out


@pytest.fixture
def train_cfg(cfg, shapes_root):
    cfg.DATASETS.TRAIN = TRAIN
    cfg.DATASETS.TRAIN_RATIOS = (1.0, 2.0, 1.0)
    return cfg


def test_train_batches_independent_of_workers_resume_and_ranks(train_cfg):
    ref = _take(build_train_loader(train_cfg, seed=5), 6)
    assert [len(b) for b in ref] == [4] * 6
    assert all(len({s[1] for s in b}) == 1 for b in ref)  # single-source batches
    assert len({s[1] for b in ref for s in b}) > 1  # several sources over the run
    train_cfg.DATALOADER.NUM_WORKERS = 2
    assert _take(build_train_loader(train_cfg, seed=5), 6) == ref
    train_cfg.DATALOADER.NUM_WORKERS = 0
    assert _take(build_train_loader(train_cfg, seed=5, start_iter=4), 2) == ref[4:]
    halves = [_take(build_train_loader(train_cfg, seed=5, rank=r, world_size=2), 6) for r in range(2)]
    assert [a + b for a, b in zip(*halves)] == ref
    assert _take(build_train_loader(train_cfg, seed=6), 6) != ref


def test_mixed_batches_and_seed_from_cfg(train_cfg):
    train_cfg.DATALOADER.MIX_TASKS_IN_BATCH = True
    train_cfg.SEED = 3
    batches = _take(build_train_loader(train_cfg), 8)
    assert any(len({s[1] for s in b}) > 1 for b in batches)
    assert batches == _take(build_train_loader(train_cfg, seed=3), 8)


def test_single_source_epochs_visit_every_image(cfg, shapes_root):
    cfg.DATASETS.TRAIN = ("shapes_vg_loca_train",)
    n = len(get_detection_dataset_dicts("shapes_vg_loca_train"))
    batches = _take(build_train_loader(cfg, seed=0), 2 * n // 4)
    ids = [s[0] for b in batches for s in b]
    assert sorted(ids[:n]) == sorted(ids[n:]) and len(set(ids[:n])) == n


def test_unreadable_images_are_replaced_counted_and_logged(tmp_path, cfg, caplog):
    images = []
    for i in range(6):
        write_image(tmp_path / f"{i}.png", np.full((40, 50, 3), 40 * i))
        images.append({"id": i, "file_name": f"{i}.png", "width": 50, "height": 40})
    truncate_file(tmp_path / "2.png")
    (tmp_path / "4.png").unlink()
    anns = [{"id": i, "image_id": i, "bbox": [5, 5, 20, 20], "caption": "a thing"} for i in range(6)]
    name = "_test_loader_bad_images"
    register_vg_json(name, write_json(tmp_path / "vg.json", {"images": images, "annotations": anns}), str(tmp_path),
                     task="region")
    try:
        cfg.DATASETS.TRAIN = (name,)
        loader = build_train_loader(cfg, seed=1)
        with caplog.at_level(logging.WARNING, logger="pixelllm_d2.data.build"):
            it = iter(loader)
            batches = [next(it) for _ in range(6)]
        del it
        seen = {d["image_id"] for b in batches for d in b}
        assert seen <= {0, 1, 3, 5} and all(len(b) == 4 for b in batches)
        assert loader.num_skipped >= 2  # 24 draws over 6 images: both bad ones come up
        assert any("2.png" in f for f in loader.skipped_files) and any("4.png" in f for f in loader.skipped_files)
        assert "replaced an unreadable sample" in caplog.text
        again = build_train_loader(cfg, seed=1)
        assert _take(again, 6) == [_signature(b) for b in batches]

        loader = build_test_loader(cfg, name)
        with pytest.raises(DataError, match="2.png: cannot read image"):
            list(loader)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_test_loader_shards_cover_every_image_once(cfg, shapes_root, world_size):
    cfg.TEST.IMS_PER_BATCH = 4
    dicts = get_detection_dataset_dicts("shapes_refcoco_val", filter_empty=False)
    seen = []
    for rank in range(world_size):
        loader = build_test_loader(cfg, "shapes_refcoco_val", rank=rank, world_size=world_size)
        batches = list(loader)
        assert all(1 <= len(b) <= 4 for b in batches)
        seen += [d["image_id"] for b in batches for d in b]
    assert seen == [d["image_id"] for d in dicts]
    out = list(itertools.chain.from_iterable(build_test_loader(cfg, "shapes_refcoco_val")))
    assert all("target_ids" in d and "gt_masks" in d for d in out)  # teacher-forced refer evaluation


def test_get_detection_dataset_dicts_filters_and_errors(tmp_path, caplog):
    name = "_test_dicts_empty"
    images = [{"id": i, "file_name": f"{i}.png", "width": 10, "height": 10} for i in range(3)]
    anns = [{"id": 1, "image_id": 0, "bbox": [1, 1, 2, 2], "caption": "x"},
            {"id": 2, "image_id": 1, "bbox": [1, 1, 2, 2], "caption": ""}]
    register_vg_json(name, write_json(tmp_path / "vg.json", {"images": images, "annotations": anns}), str(tmp_path))
    try:
        with caplog.at_level(logging.INFO, logger="pixelllm_d2.data"):
            dicts = get_detection_dataset_dicts([name])
        assert [d["image_id"] for d in dicts] == [0]
        assert len(get_detection_dataset_dicts(name, filter_empty=False)) == 3
        assert "2 without annotations removed" in caplog.text and "1 records skipped while loading" in caplog.text
        assert "empty caption" in caplog.text  # the loader's own summary
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    with pytest.raises(KeyError, match="not registered"):
        get_detection_dataset_dicts("_nope")


def test_bad_train_config_errors(train_cfg):
    train_cfg.DATASETS.TRAIN_RATIOS = (1.0,)
    with pytest.raises(ValueError, match="TRAIN_RATIOS"):
        build_train_loader(train_cfg, seed=0)
    train_cfg.DATASETS.TRAIN_RATIOS = ()
    train_cfg.SOLVER.IMS_PER_BATCH = 5
    with pytest.raises(ValueError, match="divisible by the world size"):
        build_train_loader(train_cfg, seed=0, rank=0, world_size=2)
