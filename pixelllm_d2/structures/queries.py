"""`Queries`: every query of a batch (one prompt + its texts and targets) in padded tensors, with one table of
fields and generic select / cat / trim / to (detectron2's `Instances` idea): a new field is one line of FIELDS."""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..tasks import get_task

__all__ = ["Queries", "FIELDS", "pad_to"]


@dataclass(frozen=True)
class Field:
    """How a field is stored and combined.

    tokens: dimension 1 is a token / point axis: rows of different lengths are padded with `pad`.
    pad: the value of padding and of rows from a source that did not give the field ("pad_id": the tokenizer's
        pad id, given to the `Queries`); None: the field is required of every source.
    length_of: the token axis follows this field's (token boxes are aligned with target ids).
    is_list: a Python list over queries (masks of different sizes, task names), not a tensor.
    """

    tokens: bool = False
    pad: Any = None
    length_of: Optional[str] = None
    is_list: bool = False


# Q queries, C context tokens, T target tokens, P points; coordinates in resized-image pixels.
FIELDS: Dict[str, Field] = {
    "image_index": Field(),  # (Q,) int64: the query's image in the batch
    "image_wh": Field(),  # (Q, 2) float32: unpadded (w, h) of the query's image
    "boxes": Field(pad=0.0),  # (Q, 4) float32: box prompts (ignored on rows with points)
    "has_points": Field(pad=False),  # (Q,) bool: the row is prompted by points
    "points": Field(tokens=True, pad=0.0),  # (Q, P, 2) float32 point prompts
    "point_labels": Field(tokens=True, pad=-1),  # (Q, P) int64: 1 positive, 0 negative, -1 padding
    "context_ids": Field(tokens=True, pad="pad_id"),  # (Q, C) int64 context prompt, EOS-terminated
    "target_ids": Field(tokens=True, pad="pad_id"),  # (Q, T) int64 text, EOS-terminated
    "token_boxes": Field(tokens=True, pad=0.0, length_of="target_ids"),  # (Q, T, 4) per-token targets; 0 = none
    "ref_boxes": Field(pad=0.0),  # (Q, 4) float32: GT box of the answer read at the last word
    "gt_masks": Field(is_list=True),  # list of Q (h, w) bool masks or None
    "task": Field(is_list=True),  # list of Q task names
}


def pad_to(t: torch.Tensor, length: int, value) -> torch.Tensor:
    """`t` with dimension 1 padded with `value` up to `length`."""
    extra = length - t.shape[1]
    if extra <= 0:
        return t
    return F.pad(t, [0, 0] * (t.dim() - 2) + [0, extra], value=value)


class Queries:
    """The queries of a batch. Fields are attributes (None when absent), see FIELDS for shapes.

    Args:
        pad_id: the tokenizer's pad id (padding of context / target ids).
        fields: field name -> value; `image_index`, `image_wh`, `boxes`, `context_ids` and `task` are required.
    """

    def __init__(self, pad_id: int, **fields):
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise ValueError(f"Queries: unknown field(s) {unknown}; fields: {sorted(FIELDS)}")
        self.pad_id = pad_id
        self._fields = {k: v for k, v in fields.items() if v is not None}
        missing = [k for k in ("image_index", "image_wh", "boxes", "context_ids", "task") if k not in self._fields]
        if missing:
            raise ValueError(f"Queries: missing required field(s) {missing}")
        if "has_points" not in self._fields:
            self._fields["has_points"] = torch.zeros(len(self), dtype=torch.bool, device=self.image_index.device)

    def __getattr__(self, name: str):
        if name in FIELDS:
            return self.__dict__["_fields"].get(name)
        raise AttributeError(name)

    def __len__(self) -> int:
        return int(self._fields["image_index"].numel())

    def has(self, name: str) -> bool:
        return name in self._fields

    def fields(self) -> Dict[str, Any]:
        return dict(self._fields)

    def replace(self, **fields) -> "Queries":
        return Queries(self.pad_id, **{**self._fields, **fields})

    @property
    def device(self) -> torch.device:
        return self.image_index.device

    def _pad_value(self, name: str):
        pad = FIELDS[name].pad
        return self.pad_id if pad == "pad_id" else pad

    # ------------------------------------------------------------------------------------------- by task
    def flag(self, attribute: str, value=True) -> torch.Tensor:
        """(Q,) bool: rows whose task's `attribute` (see `pixelllm_d2.tasks.Task`) equals `value`."""
        return torch.tensor([getattr(get_task(t), attribute) == value for t in self.task], dtype=torch.bool,
                            device=self.device)

    # ------------------------------------------------------------------------------------------- generic
    def select(self, index: Union[torch.Tensor, Sequence[int]]) -> "Queries":
        """The queries at `index`: a (K,) int64 tensor / list, or a (Q,) bool tensor."""
        index = torch.as_tensor(index, device=self.device)
        if index.dtype == torch.bool:
            index = index.nonzero(as_tuple=True)[0]
        index = index.long()
        rows = index.tolist()
        out = {}
        for k, v in self._fields.items():
            out[k] = [v[i] for i in rows] if FIELDS[k].is_list else v[index]
        return Queries(self.pad_id, **out)

    @staticmethod
    def cat(parts: List["Queries"]) -> "Queries":
        """One `Queries` of the rows of `parts`, in order. A field some parts lack gets its pad value on their
        rows; token axes are padded to the longest."""
        parts = [p for p in parts if p is not None]
        if not parts:
            raise ValueError("Queries.cat: nothing to concatenate")
        if len(parts) == 1:
            return parts[0]
        pad_id = parts[0].pad_id
        names = [k for k in FIELDS if any(p.has(k) for p in parts)]
        lengths = {k: max(getattr(p, k).shape[1] for p in parts if p.has(k)) for k in names if FIELDS[k].tokens}
        for k in names:  # an aligned axis takes the longer of both lengths
            src = FIELDS[k].length_of
            if src in lengths:
                lengths[k] = lengths[src] = max(lengths[k], lengths[src])
        out = {}
        for k in names:
            f = FIELDS[k]
            like = next(getattr(p, k) for p in parts if p.has(k))
            rows = []
            for p in parts:
                v = getattr(p, k)
                if f.is_list:
                    rows.append(v if v is not None else [None] * len(p))
                    continue
                pad = p._pad_value(k)
                if v is None:
                    if pad is None:
                        raise ValueError(f"Queries.cat: field {k!r} is required of every part")
                    shape = (len(p), lengths.get(k, like.shape[1] if like.dim() > 1 else 0), *like.shape[2:])
                    v = torch.full(shape[: like.dim()], pad, dtype=like.dtype, device=like.device)
                if f.tokens:
                    v = pad_to(v, lengths[k], pad)
                rows.append(v)
            out[k] = sum(rows, []) if f.is_list else torch.cat(rows)
        return Queries(pad_id, **out)

    def trimmed(self) -> "Queries":
        """The same queries with the columns of `context_ids` and `target_ids` (and `token_boxes`) that are padding in
        every row cut off. The encoder masks pad keys and the decoder is causal, so outputs at kept positions do not
        change; the language model just runs on fewer positions."""

        def used(ids: torch.Tensor) -> int:
            cols = (ids != self.pad_id).any(dim=0).nonzero()
            return int(cols[-1]) + 1 if len(cols) else min(1, ids.shape[1])

        out = dict(self._fields)
        out["context_ids"] = self.context_ids[:, : used(self.context_ids)]
        if self.target_ids is not None:
            t = used(self.target_ids)
            out["target_ids"] = self.target_ids[:, :t]
            if self.token_boxes is not None:
                out["token_boxes"] = self.token_boxes[:, :t]
        return Queries(self.pad_id, **out)

    def to(self, device) -> "Queries":
        out = {}
        for k, v in self._fields.items():
            if FIELDS[k].is_list:
                out[k] = [m.to(device) if isinstance(m, torch.Tensor) else m for m in v]
            else:
                out[k] = v.to(device)
        return Queries(self.pad_id, **out)

    def last_word(self, eos_id: int) -> torch.Tensor:
        """(Q,) int64: the position whose next target token is EOS (where the referring box is read), i.e. the
        decoder input position of the last word."""
        return (self.target_ids == eos_id).float().argmax(dim=1)

    def __repr__(self) -> str:
        shapes = {k: (len(v) if FIELDS[k].is_list else tuple(v.shape)) for k, v in self._fields.items()}
        return f"Queries(num={len(self)}, {shapes})"
