"""Base class of the task scorers (`DenseCapScorer`, `ReferScorer`, `LocaScorer`, `TraceScorer`, `CaptionScorer`)."""
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .records import normalize_predictions, require_fields

__all__ = ["Scorer"]


class Scorer:
    """Scores prediction records of one task against its ground truth.

    The constructor parses the ground truth, brings the records to one frame (`records.normalize_predictions`),
    checks they carry `fields`, and hands both to `_setup`, which does the per-image work once. Then `image_ids`
    lists the images scored and `score(image_ids)` scores any multiset of them (bootstrap resamples repeat images).

    Args:
        gt: the ground-truth json object of the task (`ground_truth.py`).
        predictions: list of prediction records (`records.py`).
        meteor: anything with `score(hypotheses, references) -> (corpus, per_pair)` (a `text_metrics.Meteor`);
            None leaves METEOR out. Tasks without METEOR ignore it.
        box_format, pred_longest_side: how to read the records' boxes (`records.normalize_predictions`).
        gt_source, pred_source: name the inputs in errors.
    """

    task = ""
    fields: Tuple[str, ...] = ()  # record fields the task needs

    def __init__(self, gt: Any, predictions: Any, meteor=None, box_format: Optional[str] = None,
                 pred_longest_side: float = 0, gt_source: str = "ground truth", pred_source: str = "predictions"):
        self.meteor = meteor
        self.gt_source, self.pred_source = gt_source, pred_source
        sizes, parsed = self._parse(gt)
        predictions = normalize_predictions(predictions, sizes, box_format, pred_longest_side, pred_source)
        require_fields(predictions, self.fields, pred_source, self.task)
        self.image_ids: List[Any] = []
        self._setup(sizes, parsed, predictions)

    def _parse(self, gt: Any) -> Tuple[Dict[Any, tuple], Any]:
        """(ordered {image_id: (height, width)}, the task's parsed ground truth)."""
        raise NotImplementedError

    def _setup(self, sizes: Dict[Any, tuple], parsed: Any, predictions: List[dict]) -> None:
        """Per-image work; sets `image_ids`."""
        raise NotImplementedError

    def score(self, image_ids: Sequence[Any]) -> Dict[str, float]:
        """Metrics over the images `image_ids` (repeats allowed)."""
        raise NotImplementedError
