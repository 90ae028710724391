"""Registration of the builtin datasets under the dataset root (`$PIXELLLM_DATASETS`, default `datasets/`).

Expected layout (see datasets/README.md for where each file comes from):
    coco/{train2014,train2017,val2017}/                 COCO images
    coco/annotations/captions_{train,val}2017.json      COCO captions (also the image sizes of LN-COCO)
    coco/dataset_coco.json                              COCO captions in the Karpathy split (train2014 / val2014 images)
    localized_narratives/coco_{train,val}_localized_narratives*.jsonl
    refcoco/{refs(unc).p,instances.json}, refcoco+/{refs(unc).p,instances.json}, refcocog/{refs(umd).p,instances.json}
    vg/{train.json,test.json,images/}                    GRiT-style json (datasets/prepare_vg.py)
    shapes/                                              the embedded benchmark, generated on first use
"""
import os
from typing import Optional

from ..catalog import DatasetCatalog, MetadataCatalog
from .coco_captions import register_coco_captions
from .coco_karpathy import register_coco_karpathy
from .localized_narratives import register_ln_jsonl
from .refcoco import register_refcoco
from .shapes import SPLITS, ensure_shapes, shapes_files, shapes_sizes
from .visual_genome import register_vg_json

__all__ = ["dataset_root", "register_all_builtin", "register_all_shapes", "SHAPES_NAMES"]

# name -> (refer-toolkit folder, refs file, splits)
_REFER = {
    "refcoco_unc": ("refcoco", "refs(unc).p", ("train", "val", "testA", "testB")),
    "refcocoplus_unc": ("refcoco+", "refs(unc).p", ("train", "val", "testA", "testB")),
    "refcocog_umd": ("refcocog", "refs(umd).p", ("train", "val", "test")),
}

# shapes dataset name -> task, per split
SHAPES_NAMES = {
    "shapes_ln_{}": "trace",
    "shapes_refcoco_{}": "refer",
    "shapes_vg_{}": "densecap",
    "shapes_vg_loca_{}": "region",
    "shapes_captions_{}": "caption",
}


def dataset_root() -> str:
    return os.path.expanduser(os.environ.get("PIXELLLM_DATASETS", "datasets"))


def register_all_builtin(root: str) -> None:
    """Register the real datasets (names of the issue / official code) under `root`."""
    coco = os.path.join(root, "coco")
    ln = os.path.join(root, "localized_narratives")
    register_ln_jsonl(
        "ln_coco_train",
        [os.path.join(ln, f"coco_train_localized_narratives-{i:05d}-of-00004.jsonl") for i in range(4)],
        os.path.join(coco, "train2017"),
        image_info_json=os.path.join(coco, "annotations", "captions_train2017.json"),
    )
    register_ln_jsonl(
        "ln_coco_val",
        os.path.join(ln, "coco_val_localized_narratives.jsonl"),
        os.path.join(coco, "val2017"),
        image_info_json=os.path.join(coco, "annotations", "captions_val2017.json"),
    )
    for prefix, (folder, refs, splits) in _REFER.items():
        for split in splits:
            args = (os.path.join(root, folder, refs), os.path.join(root, folder, "instances.json"),
                    os.path.join(coco, "train2014"), split)
            register_refcoco(f"{prefix}_{split}", *args)
    # Location-conditioned captioning on RefCOCOg (official eval name: refcocog_umd_loca_validation).
    register_refcoco(
        "refcocog_umd_loca_val", os.path.join(root, "refcocog", "refs(umd).p"),
        os.path.join(root, "refcocog", "instances.json"), os.path.join(coco, "train2014"), "val", task="region",
    )
    vg = os.path.join(root, "vg")
    for split in ("train", "test"):
        json_file = os.path.join(vg, f"{split}.json")
        register_vg_json(f"vg_{split}", json_file, os.path.join(vg, "images"), task="densecap")
        register_vg_json(f"vg_loca_{split}", json_file, os.path.join(vg, "images"), task="region")
    # The official caption data: Karpathy train + restval for training, val for evaluation (and test).
    karpathy = os.path.join(coco, "dataset_coco.json")
    register_coco_karpathy("coco_karpathy_train", karpathy, coco, ("train", "restval"))
    register_coco_karpathy("coco_karpathy_val", karpathy, coco, ("val",))
    register_coco_karpathy("coco_karpathy_test", karpathy, coco, ("test",))
    for split in ("train", "val"):
        register_coco_captions(
            f"coco_captions_{split}",
            os.path.join(coco, "annotations", f"captions_{split}2017.json"),
            os.path.join(coco, f"{split}2017"),
        )


def register_all_shapes(
    root: Optional[str] = None, num_train: Optional[int] = None, num_val: Optional[int] = None
) -> None:
    """(Re-)register the `shapes_*` datasets under `root` (default: the dataset root) at the given sizes (default:
    `PIXELLLM_SHAPES_NUM_TRAIN` / `_NUM_VAL`, else 2000 / 100). The data is generated on the first `get`."""
    root = root if root is not None else dataset_root()
    sizes = shapes_sizes(num_train, num_val)
    files = shapes_files(os.path.join(root, "shapes"))
    for split in SPLITS:
        names = {pattern.format(split): task for pattern, task in SHAPES_NAMES.items()}
        for name in names:
            if name in DatasetCatalog:
                DatasetCatalog.remove(name)
            if name in MetadataCatalog:
                MetadataCatalog.remove(name)
        register_ln_jsonl(
            f"shapes_ln_{split}", files[f"ln_{split}"], files["image_root"],
            image_file_format=split + "/{image_id:07d}.png", image_info_json=files[f"captions_{split}"],
        )
        register_refcoco(
            f"shapes_refcoco_{split}", files["refs"], files["instances"], files["image_root"], split
        )
        register_vg_json(f"shapes_vg_{split}", files[f"vg_{split}"], files["image_root"], task="densecap")
        register_vg_json(f"shapes_vg_loca_{split}", files[f"vg_{split}"], files["image_root"], task="region")
        register_coco_captions(f"shapes_captions_{split}", files[f"captions_{split}"], files["image_root"])
        for name in names:
            load = DatasetCatalog.pop(name)
            DatasetCatalog.register(name, _generate_then(load, root, sizes))
            MetadataCatalog.get(name).set(shapes_root=os.path.join(root, "shapes"), shapes_sizes=sizes)


def _generate_then(load, root, sizes):
    def run():
        ensure_shapes(root, sizes["train"], sizes["val"])
        return load()

    return run
