"""`DatasetMapper`: one dataset dict (docs/DESIGN.md §1) -> one model input (docs/DESIGN.md §2).

Per task:
- trace: one narrative (train: drawn; test: every narrative is a query); context PROMPTS.TRACE, target the
  narrative's caption, `token_boxes` from the trace alignment (INPUT.TRACE_ALIGNMENT), prompt = whole image.
- caption: train: up to INPUT.MAX_QUERIES_TRAIN captions as queries; test: one query, all captions in its
  `query_meta["captions"]`; context PROMPTS.CAPTION, prompt = whole image.
- region: one query per region / referred object, its box as the prompt; context PROMPTS.REGION, target its
  caption (one of its sentences for RefCOCO); `query_meta["captions"]` has every reference text.
- refer: one query per expression; context PROMPTS.REFER + expression, target the expression, `ref_boxes` (and
  `gt_masks` when every selected object has a segmentation), prompt = whole image.
- densecap: one query standing for the detector (prompt = whole image, context PROMPTS.DENSECAP: the prompt every
  proposal is captioned with), `gt_boxes` / `gt_target_ids` = the GT regions (train: at most
  INPUT.MAX_GT_REGIONS_TRAIN).

Training draws the queries (at most INPUT.MAX_QUERIES_TRAIN), the narrative / caption choice, the scale jitter,
the crop and the flip from the `rng` passed to `__call__`, so a sample is a pure function of (dict, rng state).
"""
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..config import configurable
from ..tasks import TASKS, get_task
from .detection_utils import DataError, read_image
from .inputs import InputBuilder, QueryChoice, transform_boxes
from .transforms import resize_crop_flip, resize_shorter_center_crop

__all__ = ["DatasetMapper", "infer_task"]

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def infer_task(dataset_dict: dict) -> str:
    """The first task (in `TASKS` order) whose kind of queries a dataset dict holds: narratives, captions,
    annotations with sentences (expressions) or other annotations (the detector's regions)."""
    anns = dataset_dict.get("annotations")
    if "narratives" in dataset_dict:
        kind = "narratives"
    elif "captions" in dataset_dict:
        kind = "captions"
    elif anns is not None:
        kind = "expressions" if anns and "sentences" in anns[0] else "detector"
    else:
        raise ValueError(
            f"{dataset_dict.get('file_name')}: cannot tell the task of a dict with keys {sorted(dataset_dict)}"
        )
    return next(name for name, t in TASKS.items() if t.queries == kind)


class DatasetMapper:
    """Turn a dataset dict into model inputs: decoded, resized (longest side = INPUT.IMAGE_SIZE, unpadded) image,
    per-query prompts and tokenised texts, and the targets of the task (see the module docstring). The queries and
    the model input are built by `data.inputs.InputBuilder`, the path the predictor takes too.

    Outputs (docs/DESIGN.md §2): "image" uint8 [3, h, w]; "height", "width" (original); "image_id", "file_name",
    "task"; "prompt_boxes" float32 [Q, 4]; "context_ids" int64 [Q, MAX_CONTEXT_LEN]; "target_ids" int64
    [Q, MAX_TEXT_LEN] (training; evaluation of trace / refer); "token_boxes" float32 [Q, MAX_TEXT_LEN, 4] (trace);
    "ref_boxes" float32 [Q, 4] and "gt_masks" bool [Q, h, w] (refer); "gt_boxes" float32 [N, 4] and
    "gt_target_ids" int64 [N, MAX_TEXT_LEN] (densecap); "query_meta" list of Q dicts. Boxes are XYXY in pixels of
    the output image.

    Training augmentation per task (INPUT.<TASK>.SCALE_RANGE / HFLIP): the resize target is IMAGE_SIZE * s, s drawn
    from SCALE_RANGE, then a random crop of at most IMAGE_SIZE per side; boxes, token boxes and masks follow the
    pixels; regions / expressions whose box is cropped away are dropped (a crop that would drop every query falls
    back to the plain resize). The flip is skipped for a sample any of whose texts says "left" or "right".
    """

    @configurable
    def __init__(
        self,
        *,
        is_train: bool,
        task: Optional[str],
        image_size: int,
        augmentations: Dict[str, Tuple[Tuple[float, float], bool]],
        test_resize: Optional[Dict[str, str]] = None,
        builder: InputBuilder,
        max_queries_train: int = 16,
        max_gt_regions_train: int = 100,
        gt_regions_selection: str = "first",
        trace_protocol: str = "official",
    ):
        """
        Args:
            is_train: training (sampling, augmentation, targets) or evaluation (all queries, plain resize).
            task: a task of `pixelllm_d2.tasks.TASKS`; None: inferred per dict (`infer_task`).
            image_size: INPUT.IMAGE_SIZE, pixels.
            augmentations: task name -> ((min_scale, max_scale), hflip).
            test_resize: task name -> evaluation geometry, "longest" (default) or "shorter_crop" (the shorter
                side to image_size, then the central square: official COCO caption evaluation).
            builder: the `InputBuilder` (tokenizer, prompts, text lengths, trace alignment).
            max_queries_train: queries per training image at most.
            max_gt_regions_train: densecap GT regions per training image at most.
            gt_regions_selection: "first" (file order, official) or "random", when an image has more.
            trace_protocol: TEST.TRACE_PROTOCOL; "official" evaluates one narrative per image (seeded by its id).
        """
        if trace_protocol not in ("official", "all_narratives"):
            raise ValueError(f"TEST.TRACE_PROTOCOL must be 'official' or 'all_narratives', got {trace_protocol!r}")
        self.one_narrative_at_test = trace_protocol == "official"
        if gt_regions_selection not in ("first", "random"):
            raise ValueError(f"INPUT.GT_REGIONS_SELECTION must be 'first' or 'random', got {gt_regions_selection!r}")
        if task is not None:
            get_task(task)
        self.is_train = is_train
        self.task = task
        self.image_size = image_size
        self.augmentations = augmentations
        self.test_resize = dict(test_resize or {})
        bad = {k: v for k, v in self.test_resize.items() if v not in ("longest", "shorter_crop")}
        if bad:
            raise ValueError(f"INPUT.<TASK>.TEST_RESIZE must be 'longest' or 'shorter_crop', got {bad}")
        self.builder = builder
        self.max_queries_train = max_queries_train
        self.max_gt_regions_train = max_gt_regions_train
        self.first_gt_regions = gt_regions_selection == "first"

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, task: Optional[str] = None):
        return {
            "is_train": is_train,
            "task": task,
            "image_size": cfg.INPUT.IMAGE_SIZE,
            "augmentations": {
                name: (tuple(cfg.INPUT[t.augmentation].SCALE_RANGE), bool(cfg.INPUT[t.augmentation].HFLIP))
                for name, t in TASKS.items()
            },
            "test_resize": {name: cfg.INPUT[t.augmentation].get("TEST_RESIZE", "longest") for name, t in TASKS.items()},
            "builder": InputBuilder(cfg),
            "max_queries_train": cfg.INPUT.MAX_QUERIES_TRAIN,
            "max_gt_regions_train": cfg.INPUT.MAX_GT_REGIONS_TRAIN,
            "gt_regions_selection": cfg.INPUT.GT_REGIONS_SELECTION,
            "trace_protocol": cfg.TEST.TRACE_PROTOCOL,
        }

    @property
    def tokenizer(self):
        return self.builder.tokenizer

    # ----------------------------------------------------------------------------------------------------------
    @staticmethod
    def _names_left_right(queries: List[dict]) -> bool:
        texts = []
        for q in queries:
            texts += [q["context"], q["target"] or ""] + list(q["meta"].get("captions", []))
            texts += [g["caption"] for g in q.get("gt", [])]
        return any(_LEFT_RIGHT.search(t) for t in texts)

    def _geometry(self, task: str, queries, height, width, rng):
        """Draw the transforms and apply them to the query boxes; drop queries cropped away."""
        scale_range, hflip = self.augmentations[task] if self.is_train else ((1.0, 1.0), False)
        flip = bool(rng.random() < 0.5) if hflip else False
        flip = flip and not self._names_left_right(queries)
        train_rng = rng if self.is_train else None
        for attempt in range(2):
            if not self.is_train and self.test_resize.get(task) == "shorter_crop":
                tfms, h, w = resize_shorter_center_crop(height, width, self.image_size)
            else:
                tfms, h, w = resize_crop_flip(height, width, self.image_size, train_rng, scale_range, flip=flip)
            kept = []
            for q in queries:
                q = dict(q)
                if q.get("box") is not None:
                    box, ok = transform_boxes(tfms, [q["box"]], h, w)
                    if not ok[0]:
                        continue
                    q["out_box"] = box[0]
                if "gt" in q:
                    boxes, ok = transform_boxes(tfms, [g["box"] for g in q["gt"]], h, w)
                    q["gt"] = [dict(g, out_box=b) for g, b, k in zip(q["gt"], boxes, ok) if k]
                    if self.is_train and self.first_gt_regions:  # official: the first ones surviving the crop
                        q["gt"] = q["gt"][: self.max_gt_regions_train]
                    q["meta"] = {"region_ids": [g["id"] for g in q["gt"]], "captions": [g["caption"] for g in q["gt"]]}
                kept.append(q)
            lost_all = bool(queries) and (
                not kept or ("gt" in queries[0] and queries[0]["gt"] and not kept[0]["gt"])
            )
            if not lost_all or attempt == 1:
                return tfms, h, w, kept
            scale_range, train_rng = (1.0, 1.0), None  # fall back to the plain resize (same flip)

    def __call__(self, dataset_dict: dict, rng: Optional[np.random.Generator] = None) -> dict:
        """
        Args:
            dataset_dict: one dict of `DatasetCatalog.get(name)`; not modified.
            rng: drives every random choice; None: a fresh unseeded generator.

        Returns:
            The model input dict described in the class docstring.

        Raises:
            DataError: the image cannot be read, or its size differs from the dict's (names the file).
        """
        rng = rng if rng is not None else np.random.default_rng()
        d = dataset_dict
        task = get_task(self.task or infer_task(d))
        image = read_image(d["file_name"])
        height, width = image.shape[:2]
        if (width, height) != (d["width"], d["height"]):
            raise DataError(
                f"{d['file_name']}: image is {width}x{height} but its dataset dict says {d['width']}x{d['height']}"
            )
        choice = QueryChoice(self.is_train, rng, self.max_queries_train, self.max_gt_regions_train, self.first_gt_regions,
                             self.one_narrative_at_test)
        queries = self.builder.dataset_queries(task, d, choice)
        tfms, h, w, queries = self._geometry(task.name, queries, height, width, rng)
        out = self.builder.model_input(image, task, queries, tfms, h, w)
        out.update(image_id=d["image_id"], file_name=d["file_name"])
        return out
