"""detectron2's evaluator protocol and the inference loop that drives it."""
import datetime
import logging
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..utils.comm import get_world_size, is_main_process

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset", "inference_context"]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Base class of an evaluator: `reset()`, then `process(inputs, outputs)` once per batch, then `evaluate()`.

    `inputs` is the batch handed to the model (a list of mapper outputs, docs/DESIGN.md §2) and `outputs` the
    model's list of result dicts (§3), one per input. Evaluators read only the documented fields.
    """

    def reset(self) -> None:
        """Prepare for a new round of evaluation (called before the first `process`)."""

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """Accumulate one batch: `inputs[i]` and `outputs[i]` describe the same image."""

    def evaluate(self) -> Optional[Dict[str, float]]:
        """Gather the accumulated results from all processes and score them.

        Returns:
            on the main process, a flat dict metric name -> value; on the other processes, None or {}.
        """


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators on the same batches and merges their result dicts (keys must not collide)."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]):
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> Dict[str, float]:
        results = OrderedDict()
        for evaluator in self._evaluators:
            result = evaluator.evaluate()
            if is_main_process() and result:
                for key, value in result.items():
                    if key in results:
                        raise KeyError(f"Two evaluators produced the metric {key!r}; give them distinct names")
                    results[key] = value
        return results


@contextmanager
def inference_context(model: nn.Module):
    """Put `model` in eval mode for the duration of the block, then restore its previous training mode."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def inference_on_dataset(
    model: nn.Module,
    data_loader,
    evaluator: Union[DatasetEvaluator, Sequence[DatasetEvaluator], None],
    log_period_s: float = 5.0,
) -> Dict[str, float]:
    """Run `model` on every batch of `data_loader` (eval mode, no gradients) and feed `evaluator`.

    Progress (images done, seconds per image, ETA) is logged at most every `log_period_s` seconds. In a
    distributed run every process iterates its own shard; the evaluator gathers the results.

    Args:
        model: called as `model(inputs)` with a list of mapper outputs, returning a list of result dicts.
        data_loader: iterable of batches (lists of dicts); `len(data_loader)` is used for the ETA when defined.
        evaluator: a `DatasetEvaluator`, a list of them, or None (inference only, e.g. to time the model).

    Returns:
        the evaluator's result dict on the main process ({} elsewhere and when `evaluator` is None).
    """
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif not isinstance(evaluator, DatasetEvaluator):
        evaluator = DatasetEvaluators(evaluator)
    try:
        total = len(data_loader)
    except TypeError:
        total = None
    logger.info(f"Start inference on {total if total is not None else 'an unknown number of'} batches "
                f"({get_world_size()} process(es))")
    evaluator.reset()
    num_images, start, last_log = 0, time.perf_counter(), time.perf_counter()
    with inference_context(model), torch.no_grad():
        for idx, inputs in enumerate(data_loader):
            outputs = model(inputs)
            evaluator.process(inputs, outputs)
            num_images += len(inputs)
            now = time.perf_counter()
            if now - last_log >= log_period_s or (total is not None and idx + 1 == total):
                last_log = now
                per_batch = (now - start) / (idx + 1)
                eta = "" if total is None else f", ETA={datetime.timedelta(seconds=int(per_batch * (total - idx - 1)))}"
                logger.info(f"Inference done {idx + 1}/{total if total is not None else '?'} batches, "
                            f"{(now - start) / num_images:.4f} s / image{eta}")
    elapsed = time.perf_counter() - start
    logger.info(f"Total inference time: {datetime.timedelta(seconds=int(elapsed))} for {num_images} images "
                f"on this process ({elapsed / max(num_images, 1):.4f} s / image)")
    results = evaluator.evaluate()
    return results if results is not None else {}
