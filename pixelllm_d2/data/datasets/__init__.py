"""Dataset loaders (one module per format), the embedded shapes benchmark, and builtin registration."""
from .builtin import dataset_root, register_all_builtin, register_all_shapes
from .coco_captions import load_coco_captions_json, register_coco_captions
from .coco_karpathy import load_coco_karpathy_json, register_coco_karpathy
from .localized_narratives import load_ln_jsonl, register_ln_jsonl
from .refcoco import load_mdetr_refcoco_json, load_refcoco, load_refs_pickle, register_mdetr_refcoco, register_refcoco
from .shapes import ensure_shapes, generate_shapes
from .visual_genome import load_vg_json, register_vg_json

__all__ = [
    "dataset_root",
    "register_all_builtin",
    "register_all_shapes",
    "load_coco_captions_json",
    "register_coco_captions",
    "load_coco_karpathy_json",
    "register_coco_karpathy",
    "load_ln_jsonl",
    "register_ln_jsonl",
    "load_refcoco",
    "load_mdetr_refcoco_json",
    "load_refs_pickle",
    "register_refcoco",
    "register_mdetr_refcoco",
    "ensure_shapes",
    "generate_shapes",
    "load_vg_json",
    "register_vg_json",
]

register_all_builtin(dataset_root())
register_all_shapes()
