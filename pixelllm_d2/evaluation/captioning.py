"""Caption metrics of location-conditioned captioning (`loca`) and image captioning (`caption`): BLEU-4, METEOR,
ROUGE-L, CIDEr with pycocoevalcap after PTB tokenization, on its 0-1 scale.

- loca: every GT region (VG: a region id, one caption) or expression (RefCOCOg: a sent id, one sentence) is its own
  item, captioned from its GT box; no merging. Predictions name their item by `region_id` or `sent_id`.
- caption: one item per image, its GT captions as references; predictions name their image by `image_id`.
An item without a prediction is scored as the empty caption (and logged), so nothing can be skipped.
"""
import logging
from typing import Any, Dict, List, Sequence, Tuple

from .ground_truth import is_refer_format, parse_captions, parse_refer, parse_vg
from .records import index_records
from .scorer import Scorer
from .text_metrics import caption_metrics, ptb_tokenize

__all__ = ["LocaScorer", "CaptionScorer"]

logger = logging.getLogger(__name__)

# {image_id: [(hypothesis, references) of each item]}
Items = Dict[Any, List[Tuple[str, List[str]]]]


class _TextScorer(Scorer):
    """Tokenizes every (hypothesis, references) item once; `score(image_ids)` scores the items of those images."""

    def _set_items(self, items: Items) -> None:
        flat = [text for pairs in items.values() for hyp, refs in pairs for text in [hyp, *refs]]
        tokens = iter(ptb_tokenize(flat))
        self._items = {
            image_id: [(next(tokens), [next(tokens) for _ in refs]) for _, refs in pairs]
            for image_id, pairs in items.items()
        }
        self.image_ids = [image_id for image_id, pairs in self._items.items() if pairs]

    def score(self, image_ids: Sequence[Any]) -> Dict[str, float]:
        """BLEU-4, METEOR (when a Meteor was given), ROUGE-L, CIDEr (0-1 scale) over the items of `image_ids`."""
        pairs = [pair for image_id in image_ids for pair in self._items[image_id]]
        return caption_metrics([h for h, _ in pairs], [r for _, r in pairs], self.meteor)


def _warn_missing(missing: int, total: int, what: str, source: str) -> None:
    if missing:
        logger.warning(f"{source}: {missing} of {total} {what} have no prediction; scored as empty captions")


class LocaScorer(_TextScorer):
    """Location-conditioned captioning metrics of prediction records against a VG json (records carry
    `region_id` = the GT annotation id) or a refer json (records carry `sent_id`). Arguments as `Scorer`."""

    task = "loca"

    def _parse(self, gt):
        if is_refer_format(gt):
            self.fields = ("sent_id", "caption")
            sizes, sentences = parse_refer(gt, self.gt_source)
            return sizes, {image_id: [(s["sent_id"], s["sentence"]) for s in sents]
                           for image_id, sents in sentences.items()}
        self.fields = ("region_id", "caption")
        sizes, regions = parse_vg(gt, self.gt_source)
        return sizes, {image_id: [(r["id"], r["caption"]) for r in regs] for image_id, regs in regions.items()}

    def _setup(self, sizes, units, predictions):
        key = self.fields[0]
        known = {item: image_id for image_id, us in units.items() for item, _ in us}
        indexed = index_records(predictions, key, known, self.pred_source, self.gt_source)
        captions = {item: rec["caption"] for item, rec in indexed.items()}
        _warn_missing(len(known) - len(captions), len(known), f"GT items ({key})", self.pred_source)
        self._set_items({image_id: [(captions.get(item, ""), [ref]) for item, ref in us]
                         for image_id, us in units.items()})


class CaptionScorer(_TextScorer):
    """Image captioning metrics of prediction records (one `caption` per `image_id`) against a COCO captions json.
    Images without GT captions are left out (and logged). Arguments as `Scorer`."""

    task = "caption"
    fields = ("caption",)

    def _parse(self, gt):
        return parse_captions(gt, self.gt_source)

    def _setup(self, sizes, references, predictions):
        indexed = index_records(predictions, "image_id", {i: i for i in sizes}, self.pred_source, self.gt_source)
        captions = {image_id: rec["caption"] for image_id, rec in indexed.items()}
        empty = [image_id for image_id, refs in references.items() if not refs]
        if empty:
            logger.warning(f"{self.gt_source}: {len(empty)} images have no GT caption; left out")
        scored = [image_id for image_id, refs in references.items() if refs]
        _warn_missing(sum(image_id not in captions for image_id in scored), len(scored), "images", self.pred_source)
        self._set_items({image_id: [(captions.get(image_id, ""), references[image_id])] for image_id in scored})
