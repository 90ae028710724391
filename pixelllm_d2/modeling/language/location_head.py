"""Location heads: every decoder hidden state -> two corner points per token.

`MLPLocationHead` is the paper's (an MLP on the token alone). `MapAttentionLocationHead` is this toolkit's option for
models trained from scratch: the token attends over the fused image map and the box is centred on what it attends
to, so pointing is learned as a choice among map cells (with a cross-entropy on that choice) instead of as a
regression from scratch (MODEL_ZOO.md, "Pointing by attention").
"""
import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...config import configurable
from ...structures import Queries, points_to_boxes
from ...tasks import Task
from ..build import LOCATION_HEAD_REGISTRY
from ..losses import cell_loss, corner_l1_loss, giou_loss

__all__ = [
    "LocationHead", "MLPLocationHead", "MapAttentionLocationHead", "points_to_boxes", "cell_centres", "cell_size",
    "cell_targets", "location_loss_config",
]

# The share of a batch's images whose task satisfies a predicate (the official per-task loss scaling).
Share = Callable[[Callable[[Task], bool]], float]


def location_loss_config(cfg) -> dict:
    """The location losses' keyword arguments of every location head (MODEL.PIXELLLM.LOSS)."""
    loss = cfg.MODEL.PIXELLLM.LOSS
    return dict(
        point_weight=loss.POINT_WEIGHT, ref_box_weight=loss.REF_BOX_WEIGHT, ref_giou_weight=loss.REF_GIOU_WEIGHT,
        cell_weight=loss.CELL_WEIGHT, region_points=loss.REGION_POINTS, image_size=cfg.INPUT.IMAGE_SIZE,
    )


class LocationHead(nn.Module):
    """Base of the location heads: their losses, weighted here.

    Args:
        point_weight: per-token corner L1 (pixels; official 0.1).
        ref_box_weight, ref_giou_weight: the box read at the last word: corner L1 (official 0.1) and GIoU (0: off).
        cell_weight: cross-entropy of a map-reading head's attention against the cells inside each target box.
        region_points: train every token of a region / dense caption towards its box (tasks whose
            `token_targets` is "query_box" / "matched_box"); trace tokens are always trained.
        image_size: side of the padded input (the cell grid covers it).
    """

    def __init__(self, *, point_weight: float = 0.1, ref_box_weight: float = 0.1, ref_giou_weight: float = 0.0,
                 cell_weight: float = 0.0, region_points: bool = True, image_size: int = 384):
        super().__init__()
        for name, v in (("point_weight", point_weight), ("ref_box_weight", ref_box_weight),
                        ("ref_giou_weight", ref_giou_weight), ("cell_weight", cell_weight)):
            if v < 0:
                raise ValueError(f"location head: {name} must be >= 0, got {v}")
        self.point_weight = point_weight
        self.ref_box_weight = ref_box_weight
        self.ref_giou_weight = ref_giou_weight
        self.cell_weight = cell_weight
        self.region_points = region_points
        self.image_size = image_size

    def locate(self, hidden: torch.Tensor, image_wh: torch.Tensor, image_map: Optional[torch.Tensor] = None,
               image_index: Optional[torch.Tensor] = None, return_logits: bool = False):
        """`forward` with the two corners flattened: (Q, T, 4) (x0, y0, x1, y1), resized pixels [, (Q, T, H * W)
        attention logits of a map-reading head, else None]."""
        out = self(hidden, image_wh, image_map, image_index, return_logits=return_logits)
        if return_logits:
            return out[0].flatten(-2), out[1]
        return out.flatten(-2)

    def _located(self, task: Task) -> bool:
        return task.token_targets == "trace_boxes" or (task.token_targets != "none" and self.region_points)

    def token_targets(self, q: Queries, eos_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-token location targets (Q, T, 4) and their validity (Q, T), by each row's task (`Task.token_targets`):
        the aligned trace boxes; with `region_points`, the query's box for every text token ("query_box", the
        official `get_gt_points_from_boxes`) or the matched GT box the dense-caption glue put in `token_boxes`."""
        t = q.target_ids.shape[1]
        gt = q.token_boxes if q.token_boxes is not None else q.boxes.new_zeros(len(q), t, 4)
        has_box = gt.abs().sum(-1) > 0
        valid = has_box & q.flag("token_targets", "trace_boxes")[:, None]
        if self.region_points:
            real = (q.target_ids != q.pad_id) & (q.target_ids != eos_id)
            region = q.flag("token_targets", "query_box")[:, None] & real
            gt = torch.where(region[..., None], q.boxes[:, None, :].expand(-1, t, -1), gt)
            matched = q.flag("token_targets", "matched_box")[:, None] & real & has_box
            valid = valid | region | matched
        return gt, valid

    def losses(self, corners: torch.Tensor, cell_logits: Optional[torch.Tensor], q: Queries, eos_id: int,
               grid: Tuple[int, int], share: Share) -> Dict[str, torch.Tensor]:
        """The weighted location losses of a teacher-forced batch.

        Args:
            corners: (Q, T, 4) predicted corners (x0, y0, x1, y1) at every decoder input position, resized pixels.
            cell_logits: (Q, T, H * W) a map-reading head's attention logits, or None.
            q: the queries (trimmed): `target_ids`, `token_boxes`, `boxes`, `ref_boxes`, `task`.
            eos_id: the tokenizer's EOS id.
            grid: (H, W) of the map the cells cover.
            share: the batch share of the images of tasks satisfying a predicate.
        Returns:
            {"loss_point", "loss_cell", "loss_ref_box", "loss_ref_giou"}, each where it applies.
        """
        losses: Dict[str, torch.Tensor] = {}
        cell_on = cell_logits is not None and self.cell_weight > 0
        gt, valid = self.token_targets(q, eos_id)
        if valid.any():
            # Token j of the target is the decoder input at position j + 1; its location is read there.
            f = share(self._located)
            losses["loss_point"] = self.point_weight * f * corner_l1_loss(corners[:, 1:], gt[:, :-1], valid[:, :-1])
            if cell_on:
                v = valid[:, :-1]
                target = cell_targets(gt[:, :-1][v], grid, self.image_size)
                losses["loss_cell"] = self.cell_weight * f * cell_loss(cell_logits[:, 1:][v], target)
        last = q.flag("box_at_last_word")
        if last.any():
            if q.ref_boxes is None:
                raise ValueError(f"training queries of tasks {sorted(set(q.task))} need 'ref_boxes'")
            rows = torch.arange(len(q), device=corners.device)
            at = q.last_word(eos_id)
            pred, target = corners[rows, at][last], q.ref_boxes[last]
            f = share(lambda t: t.box_at_last_word)
            if cell_on:
                ref_cell = self.cell_weight * f * cell_loss(cell_logits[rows, at][last], cell_targets(target, grid, self.image_size))
                losses["loss_cell"] = losses.get("loss_cell", 0.0) + ref_cell
            ones = torch.ones(len(target), dtype=torch.bool, device=target.device)
            losses["loss_ref_box"] = self.ref_box_weight * f * corner_l1_loss(pred, target, ones)
            if self.ref_giou_weight > 0:
                losses["loss_ref_giou"] = self.ref_giou_weight * f * giou_loss(pred, target)
        return losses


def _mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    # pre-LayerNorm, exact GELU (the official location head's layout)
    if num_layers < 1:
        raise ValueError(f"location head needs at least one layer, got {num_layers}")
    layers = [nn.LayerNorm(in_dim)]
    dims = [in_dim] + [hidden_dim] * (num_layers - 1)
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.GELU()]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


@LOCATION_HEAD_REGISTRY.register()
class MLPLocationHead(LocationHead):
    """Pre-LayerNorm MLP (official: 4 linear layers, hidden width 512, exact GELU) predicting per token the
    top-left and bottom-right corners of the region the token refers to, as fractions of the unpadded image:
    coordinates are `(raw + 1) / 2` (no sigmoid or clamp, as the official head) times the image width / height.

    Args:
        in_dim: decoder hidden width.
        hidden_dim: MLP width.
        num_layers: number of Linear layers (>= 1).
        losses: the loss settings of `LocationHead`.
    """

    @configurable
    def __init__(self, *, in_dim: int, hidden_dim: int = 512, num_layers: int = 4, **losses):
        super().__init__(**losses)
        self.mlp = _mlp(in_dim, hidden_dim, num_layers, 4)

    @classmethod
    def from_config(cls, cfg, in_dim: int, map_dim: int = 0):
        h = cfg.MODEL.PIXELLLM.LOCATION_HEAD
        return dict(in_dim=in_dim, hidden_dim=h.HIDDEN_DIM, num_layers=h.NUM_LAYERS, **location_loss_config(cfg))

    def forward(
        self,
        hidden: torch.Tensor,
        image_wh: torch.Tensor,
        image_map: Optional[torch.Tensor] = None,
        image_index: Optional[torch.Tensor] = None,
        return_logits: bool = False,
    ):
        """
        Args:
            hidden: (Q, T, in_dim) decoder states.
            image_wh: (Q, 2) unpadded (width, height) of each query's image, pixels.
            image_map, image_index: unused (the interface of map-reading heads).
            return_logits: also return None in place of a map-reading head's attention logits.
        Returns:
            (Q, T, 2, 2) the two corner points (x, y) per token, pixels of the resized image [, None].
        """
        raw = self.mlp(hidden).unflatten(-1, (2, 2))
        corners = (raw + 1) * 0.5 * image_wh[:, None, None, :].to(raw.dtype)
        return (corners, None) if return_logits else corners


def cell_centres(grid: Tuple[int, int], image_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H * W, 2) the (x, y) pixel centre of every cell of an H x W map over the padded square input, row-major."""
    h, w = grid
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * (image_size / h)
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * (image_size / w)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


def cell_size(grid: Tuple[int, int], image_size: int, device=None) -> torch.Tensor:
    """(2,) float32 (width, height) of one cell of an H x W map over the padded square input, pixels."""
    return torch.tensor([image_size / grid[1], image_size / grid[0]], device=device)


def _fourier(xy: torch.Tensor, num_freqs: int) -> torch.Tensor:
    # (..., 2) coordinates in [0, 1] -> (..., 4 * num_freqs) fixed sin / cos features
    freqs = (2.0 ** torch.arange(num_freqs, dtype=xy.dtype, device=xy.device)) * math.pi
    ang = (xy[..., None] * freqs).flatten(-2)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


@LOCATION_HEAD_REGISTRY.register()
class MapAttentionLocationHead(LocationHead):
    """Each decoder token attends over the cells of the fused image map (keys: the cell's features plus a fixed
    Fourier encoding of its position). The box centre is the attention-weighted mean of the cell centres plus an
    offset, and its width and height come from the token and the attended features:

        centre = sum_i p_i c_i + stride * tanh(d),  size = sigmoid(s) * (image width, height)

    with (d, s) = MLP([token, sum_i p_i v_i]). Cells wholly in the padding get no attention.

    Args:
        in_dim: decoder hidden width.
        map_dim: channels of the fused image map.
        hidden_dim: MLP width.
        num_layers: Linear layers of the offset / size MLP.
        key_dim: width of the attention's queries and keys.
        num_freqs: frequencies of the cell position encoding.
        image_size: side of the padded square input, pixels (the map covers it).
        losses: the loss settings of `LocationHead`.
    """

    @configurable
    def __init__(
        self,
        *,
        in_dim: int,
        map_dim: int,
        hidden_dim: int = 512,
        num_layers: int = 3,
        key_dim: int = 64,
        num_freqs: int = 6,
        image_size: int = 384,
        **losses,
    ):
        super().__init__(image_size=image_size, **losses)
        self.num_freqs = num_freqs
        self.query = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, key_dim))
        self.key = nn.Linear(map_dim, key_dim)
        self.key_pos = nn.Linear(4 * num_freqs, key_dim)
        self.value = nn.Linear(map_dim, hidden_dim)
        self.mlp = _mlp(in_dim + hidden_dim, hidden_dim, num_layers, 4)

    @classmethod
    def from_config(cls, cfg, in_dim: int, map_dim: int = 0):
        h = cfg.MODEL.PIXELLLM.LOCATION_HEAD
        return dict(
            in_dim=in_dim,
            map_dim=map_dim,
            hidden_dim=h.HIDDEN_DIM,
            num_layers=h.NUM_LAYERS,
            key_dim=h.KEY_DIM,
            **location_loss_config(cfg),
        )

    def forward(
        self,
        hidden: torch.Tensor,
        image_wh: torch.Tensor,
        image_map: torch.Tensor,
        image_index: torch.Tensor,
        return_logits: bool = False,
    ):
        """
        Args:
            hidden: (Q, T, in_dim) decoder states.
            image_wh: (Q, 2) unpadded (width, height) of each query's image, pixels.
            image_map: (B, map_dim, H, W) the fused image map over the padded input.
            image_index: (Q,) int64, the image of each query.
            return_logits: also return the (Q, T, H * W) attention logits (for `cell_targets` losses).
        Returns:
            (Q, T, 2, 2) the two corner points (x, y) per token, pixels of the resized image
            [, (Q, T, H * W) attention logits].
        """
        if image_map is None or image_index is None:
            raise ValueError("MapAttentionLocationHead needs the fused image map and each query's image index")
        grid = tuple(image_map.shape[-2:])
        # positions in float32 whatever the autocast dtype: bf16 would round a 384 px coordinate by up to 1 px
        centres = cell_centres(grid, self.image_size, hidden.device)
        stride = cell_size(grid, self.image_size, hidden.device)
        cells = image_map.flatten(2).transpose(1, 2)  # (B, HW, C)
        # keys and values once per image, not per query: many queries share an image
        keys = (self.key(cells) + self.key_pos(_fourier(centres / self.image_size, self.num_freqs)))[image_index]
        values = self.value(cells)[image_index]
        q = self.query(hidden)
        logits = torch.einsum("qtk,qnk->qtn", q, keys) * q.shape[-1] ** -0.5
        # a cell whose top-left corner is outside the unpadded image holds no image pixel
        inside = ((centres - stride / 2)[None] < image_wh[:, None, :].float()).all(-1)  # (Q, HW)
        logits = logits.masked_fill(~inside[:, None, :], float("-inf"))
        p = logits.float().softmax(dim=-1)
        centre = p @ centres  # (Q, T, 2)
        attended = p.to(values.dtype) @ values  # (Q, T, hidden_dim)
        raw = self.mlp(torch.cat([hidden, attended], dim=-1))
        centre = centre + stride * torch.tanh(raw[..., :2].float())
        half = torch.sigmoid(raw[..., 2:].float()) * image_wh[:, None, :].float() / 2
        corners = torch.stack([centre - half, centre + half], dim=-2)
        return (corners, logits) if return_logits else corners


def cell_targets(boxes: torch.Tensor, grid: Tuple[int, int], image_size: int) -> torch.Tensor:
    """Target distribution over map cells for (N, 4) XYXY boxes (pixels of the padded input): uniform over the
    cells whose centre lies in the box, or the cell holding the box centre when none does. Returns (N, H * W)."""
    h, w = grid
    cx, cy = cell_centres(grid, image_size, boxes.device, boxes.dtype).unbind(-1)
    cw, ch = image_size / w, image_size / h
    ordered = points_to_boxes(boxes.unflatten(-1, (2, 2)))
    lo, hi = ordered[:, :2], ordered[:, 2:]
    inside = (cx >= lo[:, :1]) & (cx <= hi[:, :1]) & (cy >= lo[:, 1:2]) & (cy <= hi[:, 1:2])
    mid = (lo + hi) / 2
    col = (mid[:, 0] / cw).long().clamp(0, w - 1)
    row = (mid[:, 1] / ch).long().clamp(0, h - 1)
    centre = F.one_hot(row * w + col, h * w).bool()
    t = torch.where(inside.any(1, keepdim=True), inside, centre).to(boxes.dtype)
    return t / t.sum(1, keepdim=True)
