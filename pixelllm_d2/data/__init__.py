"""Data: dataset catalog, loaders of the native formats, the shapes benchmark, mapper and data loaders.

Importing this package registers the builtin datasets under `$PIXELLLM_DATASETS` (default `datasets/`).
"""
from .build import TrainLoader, build_test_loader, build_train_loader, get_detection_dataset_dicts
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .dataset_mapper import DatasetMapper
from .datasets import (
    register_all_shapes,
    register_coco_captions,
    register_ln_jsonl,
    register_mdetr_refcoco,
    register_refcoco,
    register_vg_json,
)
from .detection_utils import DataError, ImageReadError, read_image
from .trace_alignment import align_tokens_to_utterances

__all__ = [
    "DatasetCatalog",
    "MetadataCatalog",
    "Metadata",
    "DatasetMapper",
    "TrainLoader",
    "build_train_loader",
    "build_test_loader",
    "get_detection_dataset_dicts",
    "register_all_shapes",
    "register_coco_captions",
    "register_ln_jsonl",
    "register_mdetr_refcoco",
    "register_refcoco",
    "register_vg_json",
    "DataError",
    "ImageReadError",
    "read_image",
    "align_tokens_to_utterances",
]
