import pytest

from pixelllm_d2.data import DatasetCatalog, MetadataCatalog

BUILTIN = [
    "ln_coco_train", "ln_coco_val",
    "refcoco_unc_train", "refcoco_unc_val", "refcoco_unc_testA", "refcoco_unc_testB",
    "refcocoplus_unc_train", "refcocoplus_unc_val", "refcocoplus_unc_testA", "refcocoplus_unc_testB",
    "refcocog_umd_train", "refcocog_umd_val", "refcocog_umd_test",
    "vg_train", "vg_test", "coco_captions_train", "coco_captions_val",
    "vg_loca_train", "vg_loca_test", "refcocog_umd_loca_val",
]
SHAPES = {
    "shapes_ln_{}": ("trace", "trace"),
    "shapes_refcoco_{}": ("refer", "refer"),
    "shapes_vg_{}": ("densecap", "densecap"),
    "shapes_vg_loca_{}": ("region", "loca"),
    "shapes_captions_{}": ("caption", "caption"),
}


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_names_registered_with_metadata(name):
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type in ("trace", "caption", "loca", "refer", "densecap")
    expected_task = "region" if "loca" in name else None
    if expected_task:
        assert meta.task == expected_task and meta.evaluator_type == "loca"
    assert meta.image_root


@pytest.mark.parametrize("pattern", sorted(SHAPES))
@pytest.mark.parametrize("split", ["train", "val"])
def test_shapes_names_and_tasks(pattern, split):
    name = pattern.format(split)
    assert name in DatasetCatalog.list()
    task, evaluator = SHAPES[pattern]
    assert (MetadataCatalog.get(name).task, MetadataCatalog.get(name).evaluator_type) == (task, evaluator)


def test_vg_and_vg_loca_read_the_same_file():
    assert MetadataCatalog.get("vg_test").json_file == MetadataCatalog.get("vg_loca_test").json_file
    assert MetadataCatalog.get("vg_test").task == "densecap"


def test_register_get_remove_and_errors():
    name = "_test_catalog_dataset"
    DatasetCatalog.register(name, lambda: [{"file_name": "a.jpg"}])
    try:
        assert DatasetCatalog.get(name) == [{"file_name": "a.jpg"}]
        with pytest.raises(KeyError, match="already registered"):
            DatasetCatalog.register(name, lambda: [])
    finally:
        DatasetCatalog.remove(name)
    assert name not in DatasetCatalog.list()
    with pytest.raises(KeyError, match="not registered. Available datasets: .*vg_train"):
        DatasetCatalog.get(name)
    with pytest.raises(TypeError):
        DatasetCatalog.register(name, [1, 2])


def test_metadata_set_get_and_conflict():
    meta = MetadataCatalog.get("_test_catalog_meta")
    try:
        meta.set(task="refer", json_file="x.json")
        assert meta.task == "refer" and meta.get("missing", 3) == 3
        meta.set(task="refer")  # same value: fine
        with pytest.raises(AttributeError, match="already 'refer'"):
            meta.task = "trace"
        with pytest.raises(AttributeError, match="has no attribute 'nope'"):
            meta.nope
    finally:
        MetadataCatalog.remove("_test_catalog_meta")
