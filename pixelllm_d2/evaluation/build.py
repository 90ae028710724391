"""Choose and build the evaluator of a registered dataset from its metadata."""
import os
from typing import List, Optional

from .evaluators import CaptionEvaluator, DenseCapEvaluator, LocaEvaluator, RefEvaluator, TraceEvaluator

__all__ = ["EVALUATOR_TYPES", "build_evaluator"]

# MetadataCatalog `evaluator_type` -> evaluator class.
EVALUATOR_TYPES = {
    "densecap": DenseCapEvaluator,
    "refer": RefEvaluator,
    "loca": LocaEvaluator,
    "trace": TraceEvaluator,
    "caption": CaptionEvaluator,
}


def build_evaluator(cfg, dataset_name: str, output_folder: Optional[str] = None, metadata=None,
                    dataset_dicts: Optional[List[dict]] = None):
    """The evaluator of `dataset_name`, chosen by `MetadataCatalog.get(dataset_name).evaluator_type`.

    Args:
        cfg: the config (reads OUTPUT_DIR, TEST.SKIP_METEOR and TEST.TRACE_PROTOCOL).
        dataset_name: a name registered in the data catalog.
        output_folder: where predictions.json / groundtruth.json / results.json go; default
            `cfg.OUTPUT_DIR/inference/<dataset_name>`.
        metadata: the dataset's metadata (anything with `evaluator_type`); default: looked up in
            `pixelllm_d2.data.MetadataCatalog`.
        dataset_dicts: the dataset's dicts, the ground truth of every evaluator but `trace`; default: looked up in
            `pixelllm_d2.data.DatasetCatalog`.

    Returns:
        a `DatasetEvaluator` for `inference_on_dataset`.
    """
    if metadata is None:
        from ..data import MetadataCatalog  # the data package is needed only when the catalog is asked

        metadata = MetadataCatalog.get(dataset_name)
    evaluator_type = getattr(metadata, "evaluator_type", None)
    if evaluator_type not in EVALUATOR_TYPES:
        raise ValueError(f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r} in its metadata; known: "
                         f"{sorted(EVALUATOR_TYPES)}")
    cls = EVALUATOR_TYPES[evaluator_type]
    kwargs = {
        "output_dir": output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name),
        "skip_meteor": cfg.TEST.SKIP_METEOR,
    }
    if cls is TraceEvaluator:
        kwargs["protocol"] = cfg.TEST.TRACE_PROTOCOL
    else:
        if dataset_dicts is None:
            from ..data import DatasetCatalog

            dataset_dicts = DatasetCatalog.get(dataset_name)
        kwargs["dataset_dicts"] = dataset_dicts
    return cls(dataset_name, **kwargs)
