"""Evaluation: detectron2's evaluator protocol, the PixelLLM metrics, and scoring of saved predictions.

- `inference_on_dataset(model, data_loader, evaluator)` runs a model and feeds a `DatasetEvaluator`;
  `build_evaluator(cfg, dataset_name)` picks the evaluator of a dataset from its metadata.
- `evaluate_predictions(task, gt, predictions)` scores saved prediction records (what `tools/evaluate.py` runs).
Metrics are fractions on pycocoevalcap's / the protocols' 0-1 scale (CIDEr may exceed 1), and `point_l1` is a
distance in units of the image size. Log tables also show them in percent.
"""
from .build import EVALUATOR_TYPES, build_evaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset
from .evaluators import CaptionEvaluator, DenseCapEvaluator, LocaEvaluator, RefEvaluator, TraceEvaluator
from .scoring import SCORERS, bootstrap, evaluate_predictions
from .text_metrics import Meteor

__all__ = [
    "DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset", "inference_context", "build_evaluator",
    "EVALUATOR_TYPES", "DenseCapEvaluator", "RefEvaluator", "LocaEvaluator", "TraceEvaluator", "CaptionEvaluator",
    "evaluate_predictions", "bootstrap", "SCORERS", "Meteor",
]
