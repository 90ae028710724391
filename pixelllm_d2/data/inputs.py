"""The one path from (image, task, queries) to a model input (docs/DESIGN.md §2). The dataset mapper (training and
evaluation) and `PixelLLMPredictor` both build their inputs here, geometry through `transforms.resize_crop_flip`
(the one resizer), so the predictor's inputs equal the test mapper's for the same image and prompts.

A query is a dict: "context" (str), "target" (str or None), "box" (XYXY original pixels or None), "points"
((P, 2) original pixels, predictor only), "segmentation", "utterances" (trace), "gt" (detector: the GT regions),
"ann_index", "meta" (handed to evaluators as `query_meta`). What queries a task has comes from its `Task.queries`
kind (`pixelllm_d2.tasks`): one builder per kind, none per task name.
"""
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import configurable
from ..structures import decode_segmentation
from ..tasks import TASKS, Task
from ..text import build_tokenizer
from .trace_alignment import align_tokens_to_utterances

__all__ = ["InputBuilder", "QueryChoice", "transform_boxes"]


def transform_boxes(tfms, boxes, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Transform XYXY boxes [N, 4] and clip them to the (h, w) output; also return which keep a positive area."""
    if len(boxes) == 0:
        return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=bool)
    out = tfms.apply_box(np.asarray(boxes, dtype=np.float64))
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out.astype(np.float32), (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])


class QueryChoice:
    """Which items of a dataset dict become queries: evaluation takes every item and draws nothing; training draws
    with `rng` (at most `max_queries` queries and `max_gt_regions` detector targets per image, in drawn order).

    Args:
        is_train: training or evaluation. rng: drives every draw (training).
        max_queries: INPUT.MAX_QUERIES_TRAIN. max_gt_regions: INPUT.MAX_GT_REGIONS_TRAIN.
        one_narrative_at_test: evaluation takes one narrative per image, drawn with a generator seeded by the image
            id (the official trace protocol, TEST.TRACE_PROTOCOL), instead of every narrative.
        first_gt_regions: the detector's regions are all kept here and cut to the first `max_gt_regions` that
            survive the crop, in file order (official; the mapper cuts), instead of a random subset
            (INPUT.GT_REGIONS_SELECTION).
    """

    def __init__(self, is_train: bool, rng: Optional[np.random.Generator] = None, max_queries: int = 16,
                 max_gt_regions: int = 100, first_gt_regions: bool = False, one_narrative_at_test: bool = False):
        self.is_train = is_train
        self.one_narrative_at_test = one_narrative_at_test
        self.rng = rng
        self.max_queries = max_queries
        self.max_gt_regions = max_gt_regions
        self.first_gt_regions = first_gt_regions

    def _subset(self, n: int, limit: int) -> List[int]:
        return [int(i) for i in self.rng.permutation(n)[:limit]] if self.is_train else list(range(n))

    def queries(self, n: int) -> List[int]:
        return self._subset(n, self.max_queries)

    def regions(self, n: int) -> List[int]:
        if self.is_train and self.first_gt_regions:
            return list(range(n))
        return self._subset(n, self.max_gt_regions)

    def one(self, n: int, key=None) -> List[int]:
        """Training: one item drawn; evaluation: every item, or (`one_narrative_at_test`) one drawn with a
        generator seeded by `key` (the image id), the same in every run."""
        if self.is_train:
            return [int(self.rng.integers(n))]
        if self.one_narrative_at_test:
            return [int(np.random.default_rng(zlib.crc32(repr(key).encode())).integers(n))]
        return list(range(n))

    def target(self, n: int) -> Optional[int]:
        """Training: which of n reference texts is the target; evaluation: None (generated)."""
        return int(self.rng.integers(n)) if self.is_train else None

    def prompt(self, pool: Sequence[str], default: str) -> str:
        """Training with a prompt pool: one prompt drawn from it (official); otherwise `default`."""
        return pool[int(self.rng.integers(len(pool)))] if self.is_train and pool else default


class InputBuilder:
    """Queries of a dataset dict or of user prompts, and the model input of an image with its queries.

    Args:
        tokenizer: a `TextTokenizer`.
        max_context_len, max_text_len: widths of `context_ids` / `target_ids` (EOS included).
        prompts: MODEL.PIXELLLM.PROMPTS by key (each task names its key, `Task.prompt`): evaluation and predictor.
        train_prompts: MODEL.PIXELLLM.TRAIN_PROMPTS by key: pools a training query's prompt is drawn from (a key
            absent or empty: its PROMPTS value).
        trace_alignment: "official" or "timestamp" (`trace_alignment.align_tokens_to_utterances`).
    """

    @configurable
    def __init__(self, *, tokenizer, max_context_len: int, max_text_len: int, prompts: Dict[str, str],
                 train_prompts: Optional[Dict[str, Sequence[str]]] = None, trace_alignment: str = "official"):
        if trace_alignment not in ("official", "timestamp"):
            raise ValueError(f"INPUT.TRACE_ALIGNMENT must be 'official' or 'timestamp', got {trace_alignment!r}")
        missing = sorted({t.prompt for t in TASKS.values()} - set(prompts))
        if missing:
            raise ValueError(f"no context prompt for {missing} (MODEL.PIXELLLM.PROMPTS)")
        self.tokenizer = tokenizer
        self.max_context_len = max_context_len
        self.max_text_len = max_text_len
        self.prompts = dict(prompts)
        self.train_prompts = {k: list(v) for k, v in (train_prompts or {}).items()}
        unknown = sorted(set(self.train_prompts) - set(self.prompts))
        if unknown:
            raise ValueError(f"training prompt pools for unknown prompt keys {unknown} (MODEL.PIXELLLM.TRAIN_PROMPTS)")
        self.trace_alignment = trace_alignment
        self._builders = {"narratives": self._narratives, "captions": self._captions, "regions": self._regions,
                          "expressions": self._expressions, "detector": self._detector}

    @classmethod
    def from_config(cls, cfg):
        lang = cfg.MODEL.PIXELLLM.LANGUAGE
        return dict(tokenizer=build_tokenizer(lang.TOKENIZER or lang.WEIGHTS), max_context_len=lang.MAX_CONTEXT_LEN,
                    max_text_len=lang.MAX_TEXT_LEN, prompts=dict(cfg.MODEL.PIXELLLM.PROMPTS),
                    train_prompts={k: list(v) for k, v in cfg.MODEL.PIXELLLM.TRAIN_PROMPTS.items()},
                    trace_alignment=cfg.INPUT.TRACE_ALIGNMENT)

    # ------------------------------------------------------------------------------------ queries of a dataset
    def dataset_queries(self, task: Task, d: dict, choice: QueryChoice) -> List[dict]:
        """The queries of dataset dict `d` (docs/DESIGN.md §1) for `task`, the items picked by `choice` (and, in
        training, each query's context prompt drawn from the task's pool)."""
        pool, default = self.train_prompts.get(task.prompt, ()), self.prompts[task.prompt]
        return self._builders[task.queries](lambda: choice.prompt(pool, default), d, choice)

    def _narratives(self, prompt, d, choice):
        narratives = d["narratives"]
        return [
            {"context": prompt(), "target": narratives[i]["caption"], "utterances": narratives[i]["utterances"],
             "meta": {"caption": narratives[i]["caption"], "annotator_id": narratives[i].get("annotator_id", ""),
                      "narrative_index": i}}
            for i in choice.one(len(narratives), key=d["image_id"])
        ]

    def _captions(self, prompt, d, choice):
        caps = d["captions"]
        if not choice.is_train:  # evaluation: one query, scored against every caption
            return [{"context": prompt(), "target": None, "meta": {"captions": list(caps)}}]
        return [{"context": prompt(), "target": caps[i], "meta": {"caption": caps[i], "captions": list(caps)}}
                for i in choice.queries(len(caps))]

    def _regions(self, prompt, d, choice):
        out = []
        for i in choice.queries(len(d["annotations"])):
            a = d["annotations"][i]
            refs = [a["caption"]] if "caption" in a else list(a["sentences"])
            k = choice.target(len(refs))
            meta = {"region_id": a.get("id", a.get("ann_id")), "captions": refs}
            if "ref_id" in a:
                meta.update(ref_id=a["ref_id"], ann_id=a["ann_id"])
            out.append({"context": prompt(), "target": refs[k] if k is not None else None, "box": a["bbox"], "meta": meta})
        return out

    def _expressions(self, prompt, d, choice):
        anns = d["annotations"]
        expressions = [(k, a, s, sid) for k, a in enumerate(anns) for s, sid in zip(a["sentences"], a["sent_ids"])]
        return [
            {"context": prompt() + s, "target": s, "box": a["bbox"], "segmentation": a.get("segmentation"), "ann_index": k,
             "meta": {"ref_id": a["ref_id"], "sent_id": sid, "sentence": s, "ann_id": a["ann_id"],
                      "category_id": a.get("category_id")}}
            for k, a, s, sid in (expressions[i] for i in choice.queries(len(expressions)))
        ]

    def _detector(self, prompt, d, choice):
        anns = d["annotations"]
        gt = [{"box": anns[i]["bbox"], "caption": anns[i]["caption"], "id": anns[i]["id"]}
              for i in choice.regions(len(anns))]
        return [{"context": prompt(), "target": None, "gt": gt,
                 "meta": {"region_ids": [g["id"] for g in gt], "captions": [g["caption"] for g in gt]}}]

    # ----------------------------------------------------------------------------------- queries of prompts
    def prompt_queries(self, task: Task, boxes=None, points=None, texts: Optional[Sequence[str]] = None,
                       prompt: Optional[str] = None) -> List[dict]:
        """The queries of user prompts (the predictor): one per box (`boxes` (N, 4) original pixels), one for all
        `points` ((P, 2) original pixels), one per text; the whole image otherwise. `prompt`: the PROMPTS key of the
        context prompt (default the task's)."""
        context = self.prompts[prompt or task.prompt]
        if task.queries == "detector":
            return [{"context": context, "target": None, "meta": {}}]
        if boxes is not None:
            return [{"context": context, "target": None, "box": [float(v) for v in b], "meta": {}} for b in boxes]
        if points is not None:
            return [{"context": context, "target": None, "points": np.asarray(points, dtype=np.float64), "meta": {}}]
        if texts is not None:
            return [{"context": context + t if task.context_text else context, "target": t, "meta": {"sentence": t}}
                    for t in texts]
        return [{"context": context, "target": None, "meta": {}}]

    # -------------------------------------------------------------------------------------- the model input
    def model_input(self, image: np.ndarray, task: Task, queries: List[dict], tfms, h: int, w: int) -> Dict:
        """The model input (docs/DESIGN.md §2) of an original (H, W, 3) uint8 RGB `image` and its `queries` (boxes,
        points and masks in original pixels), with `tfms` (from `resize_crop_flip`) giving the (h, w) input; each
        query's box already transformed is its "out_box" (the mapper drops queries cropped away)."""
        height, width = image.shape[:2]
        tok = self.tokenizer
        pixels = np.ascontiguousarray(tfms.apply_image(image))
        whole = np.array([0.0, 0.0, w, h], dtype=np.float32)
        out = {"image": torch.from_numpy(pixels.transpose(2, 0, 1).copy()), "height": height, "width": width,
               "task": task.name, "context_ids": self._pad([tok.encode(q["context"], self.max_context_len) for q in queries], self.max_context_len),
               "query_meta": [q["meta"] for q in queries]}
        if queries and queries[0].get("points") is not None:
            pts = np.stack([tfms.apply_coords(np.array(q["points"], dtype=np.float64)) for q in queries])
            pts[..., 0], pts[..., 1] = pts[..., 0].clip(0, w), pts[..., 1].clip(0, h)
            out["prompt_points"] = torch.as_tensor(pts, dtype=torch.float32)
            out["prompt_point_labels"] = torch.ones(pts.shape[:2], dtype=torch.long)
        else:
            boxes = [self._out_box(q, tfms, h, w) if task.prompt_box == "query" else whole for q in queries]
            out["prompt_boxes"] = torch.as_tensor(np.stack(boxes) if boxes else np.zeros((0, 4), dtype=np.float32))
        if task.queries != "detector" and all(q["target"] is not None for q in queries):
            out["target_ids"] = self._pad([tok.encode(q["target"], self.max_text_len) for q in queries], self.max_text_len)
        if task.token_targets == "trace_boxes" and "target_ids" in out:
            out["token_boxes"] = torch.as_tensor(
                np.stack([self._token_boxes(out["target_ids"][i].tolist(), q["utterances"], tfms, height, width, h, w)
                          for i, q in enumerate(queries)]) if queries else np.zeros((0, self.max_text_len, 4), dtype=np.float32))
        if task.box_at_last_word and all(q.get("box") is not None for q in queries):
            out["ref_boxes"] = torch.as_tensor(
                np.stack([self._out_box(q, tfms, h, w) for q in queries]) if queries else np.zeros((0, 4), dtype=np.float32))
            if queries and all(q.get("segmentation") is not None for q in queries):
                masks = {}
                for q in queries:
                    if q["ann_index"] not in masks:
                        m = tfms.apply_segmentation(decode_segmentation(q["segmentation"], height, width))
                        masks[q["ann_index"]] = np.ascontiguousarray(m).astype(bool)
                out["gt_masks"] = torch.from_numpy(np.stack([masks[q["ann_index"]] for q in queries]))
        if task.queries == "detector" and all("gt" in q for q in queries):  # the dataset's regions (training, evaluation)
            gt = queries[0]["gt"] if queries else []
            out["gt_boxes"] = torch.as_tensor(np.stack([g["out_box"] for g in gt]) if gt else np.zeros((0, 4), dtype=np.float32))
            out["gt_target_ids"] = self._pad([tok.encode(g["caption"], self.max_text_len) for g in gt], self.max_text_len)
        return out

    @staticmethod
    def _out_box(q: dict, tfms, h: int, w: int) -> np.ndarray:
        if "out_box" not in q:
            q["out_box"] = transform_boxes(tfms, [q["box"]], h, w)[0][0]
        return q["out_box"]

    def _pad(self, rows: Sequence[Sequence[int]], width: int) -> torch.Tensor:
        out = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.int64)
        return out

    def _token_boxes(self, ids: List[int], utterances, tfms, height, width, h, w) -> np.ndarray:
        """Per-token target boxes [T, 4] in output pixels: the aligned utterance's trace box, scaled to the
        original image and rounded (official), then transformed with the image; zeros for no target."""
        assign = align_tokens_to_utterances(ids, utterances, self.tokenizer, self.trace_alignment)
        out = np.zeros((len(ids), 4), dtype=np.float32)
        valid = assign >= 0
        if valid.any():
            norm = np.asarray([utterances[u]["box"] for u in assign[valid]], dtype=np.float64)
            px = np.round(np.clip(norm, 0.0, 1.0) * [width, height, width, height])
            out[valid], _ = transform_boxes(tfms, px, h, w)
        return out

