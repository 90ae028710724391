"""Score prediction records against ground truth: the one path shared by the evaluators of eval-only runs and by
`tools/evaluate.py`, so a saved `predictions.json` scores exactly as the run that wrote it.

Each task has a `scorer.Scorer` (`DenseCapScorer`, `ReferScorer`, `LocaScorer`, `TraceScorer`, `CaptionScorer`):
built from the ground truth and the prediction records, it scores any multiset of the images, which bootstrap
resampling uses.
"""
import logging
from collections import OrderedDict
from contextlib import ExitStack
from typing import Any, Dict, Optional

import numpy as np

from .captioning import CaptionScorer, LocaScorer
from .densecap import DenseCapScorer
from .refer import ReferScorer
from .text_metrics import Meteor
from .trace import TraceScorer

__all__ = ["SCORERS", "METEOR_TASKS", "evaluate_predictions", "bootstrap"]

logger = logging.getLogger(__name__)

SCORERS = {
    "densecap": DenseCapScorer,
    "refer": ReferScorer,
    "loca": LocaScorer,
    "trace": TraceScorer,
    "caption": CaptionScorer,
}
# Tasks whose metrics include METEOR.
METEOR_TASKS = ("densecap", "loca", "caption")


def bootstrap(scorer, repeats: int, seed: int) -> Dict[str, float]:
    """Mean and standard deviation of every metric over `repeats` bootstrap resamples of the scored images.

    Each resample draws `len(scorer.image_ids)` images with replacement (numpy `default_rng(seed)`); an image
    drawn twice counts twice (its predictions and GT both). This measures how much a number depends on the
    particular test images; decoding itself is deterministic.

    Returns:
        {"<metric>_boot_mean", "<metric>_boot_std" (ddof=1), "bootstrap_repeats", "bootstrap_seed"}.
    """
    if repeats < 2:
        raise ValueError(f"bootstrap needs at least 2 repeats, got {repeats}")
    rng = np.random.default_rng(seed)
    ids = scorer.image_ids
    samples = [scorer.score([ids[j] for j in rng.integers(0, len(ids), len(ids))]) for _ in range(repeats)]
    out = OrderedDict()
    for key in samples[0]:
        values = np.array([s[key] for s in samples], dtype=np.float64)
        out[f"{key}_boot_mean"] = float(values.mean())
        out[f"{key}_boot_std"] = float(values.std(ddof=1))
    out["bootstrap_repeats"] = repeats
    out["bootstrap_seed"] = seed
    return out


def evaluate_predictions(
    task: str,
    gt: Any,
    predictions: Any,
    skip_meteor: bool = False,
    meteor: Optional[Meteor] = None,
    box_format: Optional[str] = None,
    pred_longest_side: float = 0,
    repeats: int = 0,
    seed: int = 0,
    gt_source: str = "ground truth",
    pred_source: str = "predictions",
) -> Dict[str, Any]:
    """Score prediction records of `task` against ground truth.

    Args:
        task: "densecap", "refer", "loca", "trace" or "caption".
        gt: the ground-truth json object of the task (ground_truth.py).
        predictions: list of prediction records (records.py).
        skip_meteor: leave METEOR (and the metrics built on it, e.g. densecap `mAP`) out; Java is then not needed
            for densecap (the other caption metrics still need it for PTB tokenization).
        meteor: an open `Meteor` to reuse (tests share one); by default one is started and closed here.
        box_format, pred_longest_side: how to read prediction boxes (`records.normalize_predictions`).
        repeats, seed: with repeats >= 2, add bootstrap mean / std over image resamples (`bootstrap`).
        gt_source, pred_source: name the inputs in errors.

    Returns:
        flat ordered dict metric -> value (fractions; `point_l1` in units of the image size).
    """
    if task not in SCORERS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(SCORERS)}")
    with ExitStack() as stack:
        if task in METEOR_TASKS and not skip_meteor and meteor is None:
            meteor = stack.enter_context(Meteor())
        scorer = SCORERS[task](gt, predictions, meteor=None if skip_meteor else meteor, box_format=box_format,
                               pred_longest_side=pred_longest_side, gt_source=gt_source, pred_source=pred_source)
        results = OrderedDict(scorer.score(scorer.image_ids))
        if repeats:
            results.update(bootstrap(scorer, repeats, seed))
    return results
