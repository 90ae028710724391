"""Flattening the per-image queries of a batch (DESIGN.md §2) into one padded set of tensors."""
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from ...structures import validate_boxes

__all__ = ["TASKS", "TEXT_TASKS", "Queries", "gather_queries", "pad_stack"]

TASKS = ("caption", "trace", "region", "refer", "densecap")
# Tasks trained with the text loss (referring uses the expression as decoder input only: text weight 0, official).
TEXT_TASKS = ("caption", "trace", "region", "densecap")


def pad_stack(rows: List[torch.Tensor], pad_value=0, length: int = 0) -> torch.Tensor:
    """Stack (n_i, L_i, ...) tensors into (sum n_i, max L_i, ...) padding dimension 1 with `pad_value`."""
    if not rows:
        raise ValueError("pad_stack: nothing to stack")
    length = max([length] + [r.shape[1] for r in rows])
    out = []
    for r in rows:
        pad = [0, 0] * (r.dim() - 2) + [0, length - r.shape[1]]
        out.append(F.pad(r, pad, value=pad_value))
    return torch.cat(out, dim=0)


@dataclass
class Queries:
    """All queries of a batch. Q queries, C context tokens, T target tokens (coordinates: resized-image pixels).

    image_index: (Q,) image of each query. image_wh: (Q, 2) unpadded resized (w, h) of its image.
    boxes: (Q, 4) box prompts (rows of point-prompted queries are ignored). points / point_labels: (Q, P, 2) /
    (Q, P) point prompts, None when no query has points. has_points: (Q,) bool.
    context_ids: (Q, C). target_ids: (Q, T) or None. token_boxes: (Q, T, 4) or None. ref_boxes: (Q, 4) or None.
    gt_masks: list over queries of (h, w) bool masks or None. task: list of Q task names.
    """

    image_index: torch.Tensor
    image_wh: torch.Tensor
    boxes: torch.Tensor
    has_points: torch.Tensor
    points: Optional[torch.Tensor]
    point_labels: Optional[torch.Tensor]
    context_ids: torch.Tensor
    target_ids: Optional[torch.Tensor]
    token_boxes: Optional[torch.Tensor]
    ref_boxes: Optional[torch.Tensor]
    gt_masks: Optional[List[Optional[torch.Tensor]]]
    task: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.image_index.numel())

    def task_mask(self, *names: str) -> torch.Tensor:
        return torch.tensor([t in names for t in self.task], dtype=torch.bool, device=self.image_index.device)

    def trimmed(self) -> "Queries":
        """The same queries with the columns that are padding in every row cut from the end of `context_ids` and
        `target_ids` (and `token_boxes`). The encoder masks pad keys and the decoder is causal, so the outputs at
        the kept positions do not change; the language model just runs on fewer positions (refer / region /
        densecap targets are a few words, padded to MAX_TEXT_LEN)."""

        def used(ids: torch.Tensor) -> int:
            cols = (ids != 0).any(dim=0).nonzero()
            return int(cols[-1]) + 1 if len(cols) else min(1, ids.shape[1])

        c = used(self.context_ids)
        t = None if self.target_ids is None else used(self.target_ids)
        return replace(
            self,
            context_ids=self.context_ids[:, :c],
            target_ids=None if t is None else self.target_ids[:, :t],
            token_boxes=None if self.token_boxes is None or t is None else self.token_boxes[:, :t],
        )

    def select(self, index: torch.Tensor) -> "Queries":
        """The queries at `index` (a (K,) int64 or (Q,) bool tensor)."""
        if index.dtype == torch.bool:
            index = index.nonzero(as_tuple=True)[0]
        idx = index.tolist()

        def take(x):
            return None if x is None else x[index]

        return Queries(
            image_index=self.image_index[index],
            image_wh=self.image_wh[index],
            boxes=self.boxes[index],
            has_points=self.has_points[index],
            points=take(self.points),
            point_labels=take(self.point_labels),
            context_ids=self.context_ids[index],
            target_ids=take(self.target_ids),
            token_boxes=take(self.token_boxes),
            ref_boxes=take(self.ref_boxes),
            gt_masks=None if self.gt_masks is None else [self.gt_masks[i] for i in idx],
            task=[self.task[i] for i in idx],
        )


def _where(record: Dict, key: str, i: int) -> str:
    return f"input {i} ({record.get('file_name', 'no file_name')}): {key}"


def gather_queries(batched_inputs: List[Dict], device: torch.device, skip_tasks=("densecap",), require_targets: bool = False) -> Queries:
    """Flatten the queries of the images whose task is not in `skip_tasks`, validating shapes and coordinates.
    Images without `prompt_boxes` / `prompt_points` get the whole-image box for each context row."""
    rows = {k: [] for k in ("image_index", "image_wh", "boxes", "has_points", "points", "labels", "context", "target", "token_boxes", "ref_boxes")}
    masks, tasks = [], []
    any_points = any_target = any_token_boxes = any_ref = any_mask = False
    for i, x in enumerate(batched_inputs):
        task = x.get("task")
        if task not in TASKS:
            raise ValueError(f"{_where(x, 'task', i)} must be one of {TASKS}, got {task!r}")
        if task in skip_tasks:
            continue
        h, w = x["image"].shape[-2:]
        ctx = torch.as_tensor(x["context_ids"], dtype=torch.long)
        if ctx.dim() != 2:
            raise ValueError(f"{_where(x, 'context_ids', i)} must be (Q, C) int64, got shape {tuple(ctx.shape)}")
        q = ctx.shape[0]
        if q == 0:
            continue
        if "prompt_points" in x and x["prompt_points"] is not None:
            pts = torch.as_tensor(x["prompt_points"], dtype=torch.float32)
            if pts.dim() != 3 or pts.shape[0] != q or pts.shape[2] != 2:
                raise ValueError(f"{_where(x, 'prompt_points', i)} must be ({q}, P, 2), got {tuple(pts.shape)}")
            if not torch.isfinite(pts).all() or (pts < 0).any() or (pts[..., 0] > w).any() or (pts[..., 1] > h).any():
                raise ValueError(f"{_where(x, 'prompt_points', i)} outside the {w}x{h} image: {pts.tolist()}")
            labels = torch.as_tensor(x.get("prompt_point_labels", torch.ones(pts.shape[:2])), dtype=torch.long)
            rows["points"].append(pts)
            rows["labels"].append(labels)
            rows["boxes"].append(torch.zeros(q, 4))
            rows["has_points"].append(torch.ones(q, dtype=torch.bool))
            any_points = True
        else:
            boxes = x.get("prompt_boxes")
            boxes = torch.tensor([[0.0, 0.0, w, h]]).repeat(q, 1) if boxes is None else torch.as_tensor(boxes, dtype=torch.float32)
            if boxes.shape != (q, 4):
                raise ValueError(f"{_where(x, 'prompt_boxes', i)} must be ({q}, 4) XYXY, got {tuple(boxes.shape)}")
            validate_boxes(boxes, h, w, what=_where(x, "prompt_boxes (resized-image pixels)", i))
            rows["boxes"].append(boxes)
            rows["has_points"].append(torch.zeros(q, dtype=torch.bool))
            rows["points"].append(None)
            rows["labels"].append(None)
        rows["image_index"].append(torch.full((q,), i, dtype=torch.long))
        rows["image_wh"].append(torch.tensor([[w, h]], dtype=torch.float32).repeat(q, 1))
        rows["context"].append(ctx)
        tgt = x.get("target_ids")
        if tgt is None and require_targets:
            raise ValueError(f"{_where(x, 'target_ids', i)} missing: training needs target text")
        if tgt is not None:
            tgt = torch.as_tensor(tgt, dtype=torch.long)
            if tgt.dim() != 2 or tgt.shape[0] != q:
                raise ValueError(f"{_where(x, 'target_ids', i)} must be ({q}, T), got {tuple(tgt.shape)}")
            if task == "refer" and ((tgt[:, 0] == 1) | (tgt[:, 0] == 0)).any():
                raise ValueError(f"{_where(x, 'target_ids', i)}: empty referring expression")
            any_target = True
        rows["target"].append(tgt)
        tb = x.get("token_boxes")
        if tb is not None:
            tb = torch.as_tensor(tb, dtype=torch.float32)
            if tgt is None or tb.shape != (*tgt.shape, 4):
                raise ValueError(f"{_where(x, 'token_boxes', i)} must be (Q, T, 4) like target_ids, got {tuple(tb.shape)}")
            any_token_boxes = True
        rows["token_boxes"].append(tb)
        rb = x.get("ref_boxes")
        if rb is not None:
            rb = torch.as_tensor(rb, dtype=torch.float32)
            validate_boxes(rb, h, w, what=_where(x, "ref_boxes (resized-image pixels)", i))
            any_ref = True
        rows["ref_boxes"].append(rb)
        gm = x.get("gt_masks")
        if gm is not None:
            gm = torch.as_tensor(gm).bool()
            if gm.shape != (q, h, w):
                raise ValueError(f"{_where(x, 'gt_masks', i)} must be ({q}, {h}, {w}), got {tuple(gm.shape)}")
            any_mask = True
        masks.extend(list(gm) if gm is not None else [None] * q)
        tasks.extend([task] * q)

    empty_long = torch.zeros(0, dtype=torch.long)
    if not rows["image_index"]:
        return Queries(
            image_index=empty_long.to(device),
            image_wh=torch.zeros(0, 2, device=device),
            boxes=torch.zeros(0, 4, device=device),
            has_points=torch.zeros(0, dtype=torch.bool, device=device),
            points=None,
            point_labels=None,
            context_ids=torch.zeros(0, 1, dtype=torch.long, device=device),
            target_ids=None,
            token_boxes=None,
            ref_boxes=None,
            gt_masks=None,
            task=[],
        )
    n_per = [r.shape[0] for r in rows["context"]]

    def fill(key, shape_fn, dtype, value=0):
        # Rows missing for some images are filled with `value` so every query has an entry.
        out = []
        for r, n in zip(rows[key], n_per):
            out.append(r if r is not None else torch.full(shape_fn(n), value, dtype=dtype))
        return out

    points = labels = None
    if any_points:
        p = max(r.shape[1] for r in rows["points"] if r is not None)
        points = pad_stack(fill("points", lambda n: (n, p, 2), torch.float32), 0.0).to(device)
        labels = pad_stack(fill("labels", lambda n: (n, p), torch.long, -1), -1).to(device)
    target = token_boxes = None
    if any_target:
        t = max(r.shape[1] for r in rows["target"] if r is not None)
        target = pad_stack(fill("target", lambda n: (n, t), torch.long), 0).to(device)
        if any_token_boxes:
            token_boxes = pad_stack(fill("token_boxes", lambda n: (n, t, 4), torch.float32), 0.0, length=target.shape[1]).to(device)
    return Queries(
        image_index=torch.cat(rows["image_index"]).to(device),
        image_wh=torch.cat(rows["image_wh"]).to(device),
        boxes=torch.cat(rows["boxes"]).to(device),
        has_points=torch.cat(rows["has_points"]).to(device),
        points=points,
        point_labels=labels,
        context_ids=pad_stack(rows["context"], 0).to(device),
        target_ids=target,
        token_boxes=token_boxes,
        ref_boxes=torch.cat(fill("ref_boxes", lambda n: (n, 4), torch.float32)).to(device) if any_ref else None,
        gt_masks=[m.to(device) if m is not None else None for m in masks] if any_mask else None,
        task=tasks,
    )
