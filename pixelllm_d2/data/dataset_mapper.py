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
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..config import configurable
from ..tokenizer import build_tokenizer
from .datasets.builtin_meta import TASKS
from .detection_utils import DataError, read_image
from .trace_alignment import align_tokens_to_utterances
from .transforms import resize_crop_flip

__all__ = ["DatasetMapper", "infer_task"]

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def infer_task(dataset_dict: dict) -> str:
    """The task a dataset dict supports by default: trace (narratives), caption (captions), refer (annotations
    with sentences) or densecap (annotations with captions)."""
    if "narratives" in dataset_dict:
        return "trace"
    if "captions" in dataset_dict:
        return "caption"
    anns = dataset_dict.get("annotations")
    if anns is not None:
        return "refer" if anns and "sentences" in anns[0] else "densecap"
    raise ValueError(
        f"{dataset_dict.get('file_name')}: cannot tell the task of a dict with keys {sorted(dataset_dict)}"
    )


def _pad(rows: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.int64)
    return out


def _decode_mask(seg, height: int, width: int) -> np.ndarray:
    """COCO polygons / RLE -> uint8 [H, W]."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    with warnings.catch_warnings():  # pycocotools' decode under NumPy 2 warns about __array__(copy=...) each call
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(np.uint8)


class DatasetMapper:
    """Turn a dataset dict into model inputs: decoded, resized (longest side = INPUT.IMAGE_SIZE, unpadded) image,
    per-query prompts and tokenised texts, and the targets of the task (see the module docstring).

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
        tokenizer,
        max_context_len: int,
        max_text_len: int,
        prompts: Dict[str, str],
        max_queries_train: int = 16,
        max_gt_regions_train: int = 100,
        trace_alignment: str = "official",
    ):
        """
        Args:
            is_train: training (sampling, augmentation, targets) or evaluation (all queries, plain resize).
            task: one of "trace", "caption", "region", "refer", "densecap"; None: inferred per dict (`infer_task`).
            image_size: INPUT.IMAGE_SIZE, pixels.
            augmentations: task -> ((min_scale, max_scale), hflip).
            tokenizer: a `TextTokenizer`.
            max_context_len, max_text_len: widths of context_ids / target_ids (EOS included).
            prompts: task -> context prompt.
            max_queries_train: queries per training image at most.
            max_gt_regions_train: densecap GT regions per training image at most.
            trace_alignment: "official" or "timestamp" (`trace_alignment.align_tokens_to_utterances`).
        """
        if task is not None and task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
        if trace_alignment not in ("official", "timestamp"):
            raise ValueError(f"INPUT.TRACE_ALIGNMENT must be 'official' or 'timestamp', got {trace_alignment!r}")
        self.is_train = is_train
        self.task = task
        self.image_size = image_size
        self.augmentations = augmentations
        self.tokenizer = tokenizer
        self.max_context_len = max_context_len
        self.max_text_len = max_text_len
        self.prompts = prompts
        self.max_queries_train = max_queries_train
        self.max_gt_regions_train = max_gt_regions_train
        self.trace_alignment = trace_alignment

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, task: Optional[str] = None):
        lang = cfg.MODEL.PIXELLLM.LANGUAGE
        return {
            "is_train": is_train,
            "task": task,
            "image_size": cfg.INPUT.IMAGE_SIZE,
            "augmentations": {
                t: (tuple(cfg.INPUT[t.upper()].SCALE_RANGE), bool(cfg.INPUT[t.upper()].HFLIP)) for t in TASKS
            },
            "tokenizer": build_tokenizer(lang.TOKENIZER or lang.WEIGHTS),
            "max_context_len": lang.MAX_CONTEXT_LEN,
            "max_text_len": lang.MAX_TEXT_LEN,
            "prompts": {t: cfg.MODEL.PIXELLLM.PROMPTS[t.upper()] for t in TASKS},
            "max_queries_train": cfg.INPUT.MAX_QUERIES_TRAIN,
            "max_gt_regions_train": cfg.INPUT.MAX_GT_REGIONS_TRAIN,
            "trace_alignment": cfg.INPUT.TRACE_ALIGNMENT,
        }

    # ----------------------------------------------------------------------------------------------------------
    def _subset(self, n: int, limit: int, rng: np.random.Generator) -> List[int]:
        """Training: a random subset of at most `limit` of range(n) (in drawn order); evaluation: all."""
        if not self.is_train:
            return list(range(n))
        return [int(i) for i in rng.permutation(n)[:limit]]

    def _queries(self, task: str, d: dict, rng: np.random.Generator) -> List[dict]:
        """Queries: {"context", "target" (or None), "box" (XYXY original pixels, or None), "segmentation",
        "utterances" (trace), "meta"}."""
        prompt = self.prompts[task]
        if task == "trace":
            narratives = d["narratives"]
            chosen = [int(rng.integers(len(narratives)))] if self.is_train else range(len(narratives))
            return [
                {"context": prompt, "target": narratives[i]["caption"], "utterances": narratives[i]["utterances"],
                 "meta": {"caption": narratives[i]["caption"], "annotator_id": narratives[i].get("annotator_id", ""),
                          "narrative_index": i}}
                for i in chosen
            ]
        if task == "caption":
            caps = d["captions"]
            if not self.is_train:
                return [{"context": prompt, "target": None, "meta": {"captions": list(caps)}}]
            return [
                {"context": prompt, "target": caps[i], "meta": {"caption": caps[i], "captions": list(caps)}}
                for i in self._subset(len(caps), self.max_queries_train, rng)
            ]
        anns = d["annotations"]
        if task == "region":
            out = []
            for i in self._subset(len(anns), self.max_queries_train, rng):
                a = anns[i]
                refs = [a["caption"]] if "caption" in a else list(a["sentences"])
                target = refs[int(rng.integers(len(refs)))] if self.is_train else None
                meta = {"region_id": a.get("id", a.get("ann_id")), "captions": refs}
                if "ref_id" in a:
                    meta.update(ref_id=a["ref_id"], ann_id=a["ann_id"])
                out.append({"context": prompt, "target": target, "box": a["bbox"], "meta": meta})
            return out
        if task == "refer":
            expressions = [
                (k, a, s, sid) for k, a in enumerate(anns) for s, sid in zip(a["sentences"], a["sent_ids"])
            ]
            chosen = [expressions[i] for i in self._subset(len(expressions), self.max_queries_train, rng)]
            return [
                {"context": prompt + s, "target": s, "box": a["bbox"], "segmentation": a.get("segmentation"),
                 "ann_index": k,
                 "meta": {"ref_id": a["ref_id"], "sent_id": sid, "sentence": s, "ann_id": a["ann_id"],
                          "category_id": a.get("category_id")}}
                for k, a, s, sid in chosen
            ]
        if task == "densecap":
            keep = self._subset(len(anns), self.max_gt_regions_train, rng)
            gt = [{"box": anns[i]["bbox"], "caption": anns[i]["caption"], "id": anns[i]["id"]} for i in keep]
            return [{"context": prompt, "target": None, "gt": gt,
                     "meta": {"region_ids": [g["id"] for g in gt], "captions": [g["caption"] for g in gt]}}]
        raise ValueError(f"unknown task {task!r}")

    @staticmethod
    def _names_left_right(queries: List[dict]) -> bool:
        texts = []
        for q in queries:
            texts += [q["context"], q["target"] or ""] + list(q["meta"].get("captions", []))
            texts += [g["caption"] for g in q.get("gt", [])]
        return any(_LEFT_RIGHT.search(t) for t in texts)

    @staticmethod
    def _boxes(tfms, boxes: np.ndarray, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        """Transform XYXY boxes [N, 4] and clip them to the output; also return which keep a positive area."""
        if len(boxes) == 0:
            return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=bool)
        out = tfms.apply_box(np.asarray(boxes, dtype=np.float64))
        out[:, 0::2] = out[:, 0::2].clip(0, w)
        out[:, 1::2] = out[:, 1::2].clip(0, h)
        return out.astype(np.float32), (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])

    def _geometry(self, task, queries, height, width, rng):
        """Draw the transforms and apply them to the query boxes; drop queries cropped away."""
        scale_range, hflip = self.augmentations[task] if self.is_train else ((1.0, 1.0), False)
        flip = bool(rng.random() < 0.5) if hflip else False
        flip = flip and not self._names_left_right(queries)
        train_rng = rng if self.is_train else None
        for attempt in range(2):
            tfms, h, w = resize_crop_flip(height, width, self.image_size, train_rng, scale_range, flip=flip)
            kept = []
            for q in queries:
                q = dict(q)
                if q.get("box") is not None:
                    box, ok = self._boxes(tfms, [q["box"]], h, w)
                    if not ok[0]:
                        continue
                    q["out_box"] = box[0]
                if "gt" in q:
                    boxes, ok = self._boxes(tfms, [g["box"] for g in q["gt"]], h, w)
                    q["gt"] = [dict(g, out_box=b) for g, b, k in zip(q["gt"], boxes, ok) if k]
                    q["meta"] = {"region_ids": [g["id"] for g in q["gt"]], "captions": [g["caption"] for g in q["gt"]]}
                kept.append(q)
            lost_all = bool(queries) and (
                not kept or ("gt" in queries[0] and queries[0]["gt"] and not kept[0]["gt"])
            )
            if not lost_all or attempt == 1:
                return tfms, h, w, kept
            scale_range, train_rng = (1.0, 1.0), None  # fall back to the plain resize (same flip)

    def _token_boxes(self, ids: List[int], utterances, tfms, height, width, h, w) -> np.ndarray:
        """Per-token target boxes [T, 4] in output pixels: the aligned utterance's trace box, scaled to the
        original image and rounded (official), then transformed with the image; zeros for no target."""
        assign = align_tokens_to_utterances(ids, utterances, self.tokenizer, self.trace_alignment)
        out = np.zeros((len(ids), 4), dtype=np.float32)
        valid = assign >= 0
        if valid.any():
            norm = np.asarray([utterances[u]["box"] for u in assign[valid]], dtype=np.float64)
            px = np.round(np.clip(norm, 0.0, 1.0) * [width, height, width, height])
            out[valid], _ = self._boxes(tfms, px, h, w)
        return out

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
        task = self.task or infer_task(d)
        image = read_image(d["file_name"])
        height, width = image.shape[:2]
        if (width, height) != (d["width"], d["height"]):
            raise DataError(
                f"{d['file_name']}: image is {width}x{height} but its dataset dict says {d['width']}x{d['height']}"
            )
        queries = self._queries(task, d, rng)
        tfms, h, w, queries = self._geometry(task, queries, height, width, rng)
        image = np.ascontiguousarray(tfms.apply_image(image))

        tok = self.tokenizer
        whole = np.array([0.0, 0.0, w, h], dtype=np.float32)
        out = {
            "image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
            "height": height,
            "width": width,
            "image_id": d["image_id"],
            "file_name": d["file_name"],
            "task": task,
            "prompt_boxes": torch.as_tensor(
                np.stack([q["out_box"] if task == "region" else whole for q in queries])
                if queries else np.zeros((0, 4), dtype=np.float32)
            ),
            "context_ids": _pad(
                [tok.encode(q["context"], self.max_context_len) for q in queries], self.max_context_len
            ),
            "query_meta": [q["meta"] for q in queries],
        }
        if task != "densecap" and all(q["target"] is not None for q in queries):  # test: only trace / refer
            out["target_ids"] = _pad([tok.encode(q["target"], self.max_text_len) for q in queries], self.max_text_len)
        if task == "trace":
            out["token_boxes"] = torch.as_tensor(
                np.stack([
                    self._token_boxes(out["target_ids"][i].tolist(), q["utterances"], tfms, height, width, h, w)
                    for i, q in enumerate(queries)
                ]) if queries else np.zeros((0, self.max_text_len, 4), dtype=np.float32)
            )
        if task == "refer":
            out["ref_boxes"] = torch.as_tensor(
                np.stack([q["out_box"] for q in queries]) if queries else np.zeros((0, 4), dtype=np.float32)
            )
            if queries and all(q.get("segmentation") is not None for q in queries):
                masks = {}
                for q in queries:
                    if q["ann_index"] not in masks:
                        m = tfms.apply_segmentation(_decode_mask(q["segmentation"], height, width))
                        masks[q["ann_index"]] = np.ascontiguousarray(m).astype(bool)
                out["gt_masks"] = torch.from_numpy(np.stack([masks[q["ann_index"]] for q in queries]))
        if task == "densecap":
            gt = queries[0]["gt"] if queries else []
            out["gt_boxes"] = torch.as_tensor(
                np.stack([g["out_box"] for g in gt]) if gt else np.zeros((0, 4), dtype=np.float32)
            )
            out["gt_target_ids"] = _pad([tok.encode(g["caption"], self.max_text_len) for g in gt], self.max_text_len)
        return out
