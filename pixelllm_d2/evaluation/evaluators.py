"""The evaluators of eval-only runs and in-training evaluation, one per `MetadataCatalog` `evaluator_type`.

Each turns model outputs (docs/DESIGN.md §3) into prediction records, gathers them from all processes, and on the
main process writes to `output_dir` (normally `OUTPUT_DIR/inference/<dataset_name>/`):
- `predictions.json`: the COCO-style records (`records.py`), boxes `[x, y, w, h]` in original pixels, each record
  stating `"bbox_mode": "XYWH_ABS"`;
- `groundtruth.json`: the ground truth it scored against, in the format `tools/evaluate.py --gt` reads
  (`ground_truth.py`), restricted to the images it processed;
- `results.json`: the flat metrics dict, also logged as a table.
Scoring goes through `scoring.evaluate_predictions`, the function `tools/evaluate.py` calls, so
`tools/evaluate.py --gt groundtruth.json --pred predictions.json` reproduces `results.json` exactly.
"""
import logging
import os
from typing import Any, Dict, List, Optional

import torch

from ..utils.comm import all_gather, is_main_process
from .evaluator import DatasetEvaluator
from .ground_truth import captions_ground_truth, refer_ground_truth, subset_ground_truth, vg_ground_truth
from .records import mask_rle, output_records, xywh_lists
from .report import json_ready, results_table, write_json_atomic
from .scoring import evaluate_predictions

__all__ = ["DenseCapEvaluator", "RefEvaluator", "LocaEvaluator", "TraceEvaluator", "CaptionEvaluator"]

logger = logging.getLogger(__name__)


class _TaskEvaluator(DatasetEvaluator):
    """Collects records per image, gathers, writes the three files and scores (module docstring).

    Args:
        dataset_name: names the dataset in logs.
        output_dir: where to write the files; None writes nothing.
        skip_meteor: leave METEOR out (only when the user asks: TEST.SKIP_METEOR).
    """

    task = ""

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, skip_meteor: bool = False):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._skip_meteor = skip_meteor
        self.reset()

    def _records(self, inp: dict, out: dict) -> List[dict]:
        return output_records(inp, out)

    def _gt_entries(self, inp: dict) -> Optional[tuple]:
        """(image entry, annotations) of the ground truth this input carries, for evaluators whose ground truth
        comes from the inputs; None otherwise."""
        return None

    def reset(self) -> None:
        self._per_image = []  # (image_id, records, gt entries)

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            self._per_image.append((inp["image_id"], self._records(inp, out), self._gt_entries(inp)))

    def _full_ground_truth(self, gt_entries: List[tuple]) -> dict:
        """The ground-truth json object of every image of the dataset."""
        raise NotImplementedError

    def evaluate(self) -> Dict[str, Any]:
        gathered = all_gather(self._per_image)
        if not is_main_process():
            return {}
        image_ids, predictions, gt_entries, repeated = [], [], [], 0
        seen = set()
        for per_image in gathered:
            for image_id, records, entries in per_image:
                if image_id in seen:  # a sampler that pads its shards repeats images
                    repeated += 1
                    continue
                seen.add(image_id)
                image_ids.append(image_id)
                predictions.extend(records)
                if entries is not None:
                    gt_entries.append(entries)
        if repeated:
            logger.info(f"{self._dataset_name}: ignored {repeated} repeated images")
        if not image_ids:
            logger.warning(f"{self._dataset_name}: the evaluator received no images; nothing to evaluate")
            return {}
        full_gt = self._full_ground_truth(gt_entries)
        known = {img["id"] for img in full_gt["images"]}
        unknown = [i for i in image_ids if i not in known]
        if unknown:
            raise ValueError(f"{self._dataset_name}: processed images {unknown[:5]} are not in the ground truth")
        if len(known) > len(image_ids):
            logger.warning(f"{self._dataset_name}: evaluated {len(image_ids)} of the {len(known)} images of the "
                           "dataset; the others are left out (tools/evaluate.py with the full ground truth would "
                           "count them)")
        gt = subset_ground_truth(full_gt, image_ids)
        if self._output_dir:
            write_json_atomic(os.path.join(self._output_dir, "predictions.json"), predictions)
            write_json_atomic(os.path.join(self._output_dir, "groundtruth.json"), gt)
        results = json_ready(evaluate_predictions(
            self.task, gt, predictions, skip_meteor=self._skip_meteor,
            gt_source=f"{self._dataset_name} ground truth", pred_source=f"{self._dataset_name} predictions",
        ))
        if self._output_dir:
            write_json_atomic(os.path.join(self._output_dir, "results.json"), results)
            logger.info(f"Wrote predictions.json, groundtruth.json and results.json to {self._output_dir}")
        logger.info(results_table(results, f"Evaluation of {self._dataset_name} ({self.task}):"))
        return results


class _DatasetGroundTruthEvaluator(_TaskEvaluator):
    """An evaluator whose ground truth comes from the dataset, not from the inputs.

    Args:
        dataset_name, output_dir, skip_meteor: as `_TaskEvaluator`.
        dataset_dicts: the dataset's dicts (docs/DESIGN.md §1), the source of the ground truth; or
        ground_truth: the ground-truth json object itself (the format `tools/evaluate.py --gt` reads).
    """

    def __init__(self, dataset_name: str, dataset_dicts: Optional[List[dict]] = None,
                 ground_truth: Optional[dict] = None, output_dir: Optional[str] = None, skip_meteor: bool = False):
        if (dataset_dicts is None) == (ground_truth is None):
            raise ValueError(f"{type(self).__name__}: give exactly one of dataset_dicts and ground_truth")
        self._gt = ground_truth if ground_truth is not None else self._ground_truth_from_dicts(dataset_dicts)
        super().__init__(dataset_name, output_dir, skip_meteor)

    def _ground_truth_from_dicts(self, dataset_dicts: List[dict]) -> dict:
        raise NotImplementedError

    def _full_ground_truth(self, gt_entries):
        return self._gt


def _query_meta(inp: dict, n: int) -> List[dict]:
    meta = inp.get("query_meta")
    if meta is None or len(meta) != n:
        raise ValueError(f"image {inp['image_id']!r}: {n} results but query_meta has "
                         f"{'no entries' if meta is None else len(meta)}")
    return meta


def _with_ids(records: List[dict], inp: dict, keys) -> List[dict]:
    for rec, meta in zip(records, _query_meta(inp, len(records))):
        for key in keys:
            if key in meta:
                rec[key] = meta[key]
    return records


class DenseCapEvaluator(_DatasetGroundTruthEvaluator):
    """VG dense captioning: `mAP`, `mAP_detection` and the per-threshold APs (`densecap.py`)."""

    task = "densecap"

    def _ground_truth_from_dicts(self, dataset_dicts):
        return vg_ground_truth(dataset_dicts)


class LocaEvaluator(_DatasetGroundTruthEvaluator):
    """Location-conditioned captioning (GT boxes as prompts): BLEU-4, METEOR, ROUGE-L, CIDEr. Each result is
    tied to its GT item by `query_meta[i]["region_id"]` (VG) or `["sent_id"]` (RefCOCOg)."""

    task = "loca"

    def _ground_truth_from_dicts(self, dataset_dicts):
        is_refer = any("sentences" in ann for d in dataset_dicts for ann in d.get("annotations", []))
        return refer_ground_truth(dataset_dicts) if is_refer else vg_ground_truth(dataset_dicts)

    def _records(self, inp, out):
        return _with_ids(output_records(inp, out), inp, ("region_id", "sent_id", "ref_id"))


class RefEvaluator(_DatasetGroundTruthEvaluator):
    """Referring: box `P@0.5` and, when the model predicts masks, `mask_cIoU`, `mask_mIoU`, `mask_P@0.5`,
    `mask_box_P@0.5`. Each result is tied to its expression by `query_meta[i]["sent_id"]`."""

    task = "refer"

    def _ground_truth_from_dicts(self, dataset_dicts):
        return refer_ground_truth(dataset_dicts)

    def _records(self, inp, out):
        records = _with_ids(output_records(inp, out), inp, ("sent_id", "ref_id"))
        if "pred_masks" in out:
            for rec, mask in zip(records, out["pred_masks"]):
                rec["segmentation"] = mask_rle(mask)
        return records


class CaptionEvaluator(_DatasetGroundTruthEvaluator):
    """COCO captions: BLEU-4, METEOR, ROUGE-L, CIDEr of one caption per image."""

    task = "caption"

    def _ground_truth_from_dicts(self, dataset_dicts):
        return captions_ground_truth(dataset_dicts)

    def _records(self, inp, out):
        records = output_records(inp, out)
        if len(records) != 1:
            raise ValueError(f"image {inp['image_id']!r}: captioning expects 1 result per image, got {len(records)}")
        return records


class TraceEvaluator(_TaskEvaluator):
    """Localized Narratives traces: `point_l1` of the teacher-forced per-token boxes. The ground truth is the
    inputs' `token_boxes` (resized pixels, mapped back to the original image), so no dataset dicts are needed.

    Args:
        dataset_name, output_dir: as `_TaskEvaluator` (METEOR is not used).
        protocol: "official" (the raw predicted corners, `token_corners`; images without a located token count 0;
            the mapper gives one narrative per image) or "all_narratives" (the ordered, clipped `token_boxes`;
            such images left out). Written into groundtruth.json, so tools/evaluate.py scores the same way.
    """

    task = "trace"

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, skip_meteor: bool = False,
                 protocol: str = "official"):
        if protocol not in ("official", "all_narratives"):
            raise ValueError(f"trace protocol must be 'official' or 'all_narratives', got {protocol!r}")
        self._protocol = protocol
        super().__init__(dataset_name, output_dir, skip_meteor)

    def _records(self, inp, out):
        records = output_records(inp, out)
        boxes = out["token_corners"] if self._protocol == "official" else out["token_boxes"]
        for q, (rec, b) in enumerate(zip(records, boxes)):
            rec["query_index"] = q
            rec["token_boxes"] = xywh_lists(b)
        return records

    def _gt_entries(self, inp):
        resized_h, resized_w = inp["image"].shape[-2:]
        scale = torch.tensor([inp["width"] / resized_w, inp["height"] / resized_h] * 2, dtype=torch.float64)
        image = {"id": inp["image_id"], "height": int(inp["height"]), "width": int(inp["width"])}
        annotations = [
            {"image_id": inp["image_id"], "query_index": q, "token_boxes": xywh_lists(boxes.to(torch.float64) * scale)}
            for q, boxes in enumerate(torch.as_tensor(inp["token_boxes"]).cpu())
        ]
        return image, annotations

    def _full_ground_truth(self, gt_entries):
        return {"bbox_mode": "XYWH_ABS", "trace_protocol": self._protocol, "images": [image for image, _ in gt_entries],
                "annotations": [ann for _, anns in gt_entries for ann in anns]}
