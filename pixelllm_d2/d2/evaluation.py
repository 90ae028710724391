"""PixelLLM's evaluators as detectron2 `DatasetEvaluator`s (for `DatasetEvaluators`, `inference_on_dataset`,
`print_csv_format`), reading outputs of `D2PixelLLM` ({"instances"}) and of `PixelLLM` alike."""
from typing import Dict

from detectron2.evaluation import DatasetEvaluator

from ..evaluation import build_evaluator
from .modeling import pixelllm_output

__all__ = ["D2Evaluator", "build_d2_evaluator"]


class D2Evaluator(DatasetEvaluator):
    """A PixelLLM evaluator as a detectron2 one.

    Args:
        evaluator: a PixelLLM evaluator (`pixelllm_d2.evaluation.build_evaluator`).
        name: the key of its results (detectron2 results are {task: {metric: value}}), e.g. the dataset name.
    """

    def __init__(self, evaluator, name: str):
        self.evaluator = evaluator
        self.name = name

    def reset(self) -> None:
        self.evaluator.reset()

    def process(self, inputs, outputs) -> None:
        self.evaluator.process(inputs, [pixelllm_output(o) for o in outputs])

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """{name: the PixelLLM metrics}; {} on processes other than the main one (as detectron2's evaluators).
        `print_csv_format` leaves out metrics with a "-" in their name (BLEU-4, ROUGE-L), as it leaves out
        detectron2's per-category APs; the log table and results.json have every metric."""
        results = self.evaluator.evaluate()
        return {self.name: {k: v for k, v in results.items() if isinstance(v, (int, float))}} if results else {}


def build_d2_evaluator(cfg, dataset_name: str, output_folder=None) -> D2Evaluator:
    """The PixelLLM evaluator of `dataset_name` (its `evaluator_type`), as a detectron2 `DatasetEvaluator`."""
    return D2Evaluator(build_evaluator(cfg, dataset_name, output_folder), dataset_name)
