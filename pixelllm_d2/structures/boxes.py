"""Box conventions.

Everything inside pixelllm_d2 uses XYXY boxes in absolute pixels of the image they refer to (the original image in
dataset dicts and model outputs, the resized image inside the model). `BoxMode` names the formats found in files so
loaders and writers can say which one they read or write.
"""
from enum import IntEnum

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

__all__ = ["BoxMode", "box_iou", "clip_boxes", "jitter_boxes", "points_to_boxes", "validate_boxes"]


class BoxMode(IntEnum):
    """Box formats (detectron2's values for the modes both have)."""

    XYXY_ABS = 0  # (x0, y0, x1, y1) in pixels
    XYWH_ABS = 1  # (x0, y0, w, h) in pixels (COCO, LVIS, GRiT's VG json)
    CXCYWH_ABS = 5  # (center x, center y, w, h) in pixels (DenseCap's Lua code)

    @staticmethod
    def convert(boxes, from_mode: "BoxMode", to_mode: "BoxMode"):
        """Convert an (N, 4) tensor / array / list of boxes, or one box, between modes; returns the input's type."""
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return boxes
        names = {BoxMode.XYXY_ABS: "xyxy", BoxMode.XYWH_ABS: "xywh", BoxMode.CXCYWH_ABS: "cxcywh"}
        t = torch.as_tensor(boxes, dtype=torch.float64)
        single = t.ndim == 1
        out = box_convert(t.reshape(-1, 4), names[from_mode], names[to_mode])
        out = out[0] if single else out
        if isinstance(boxes, torch.Tensor):
            return out.to(boxes.dtype)
        if isinstance(boxes, (list, tuple)):
            return out.tolist()
        return out.numpy().astype(getattr(boxes, "dtype", "float64"))


def points_to_boxes(points: torch.Tensor) -> torch.Tensor:
    """(..., 2, 2) two (x, y) points -> (..., 4) XYXY box spanning them (the official `decode_boxes_from_points`).
    Pass `boxes.unflatten(-1, (2, 2))` to order the corners of (..., 4) boxes."""
    lo = points.min(dim=-2).values
    hi = points.max(dim=-2).values
    return torch.cat([lo, hi], dim=-1)


def clip_boxes(boxes: torch.Tensor, height, width) -> torch.Tensor:
    """Clip (..., 4) XYXY boxes to [0, width] x [0, height]; `height` / `width` are numbers or tensors of shape
    (..., 1) (one image size per box)."""
    x = boxes[..., 0::2].clamp(min=0).clamp(max=width)
    y = boxes[..., 1::2].clamp(min=0).clamp(max=height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def jitter_boxes(boxes: torch.Tensor, fraction: float, image_wh: torch.Tensor, max_px: float = 20.0) -> torch.Tensor:
    """SAM's box-prompt noise: Gaussian noise on every coordinate of (N, 4) XYXY boxes with std `fraction` of the box
    width (x) or height (y), at most `max_px`, drawn with torch's global RNG; the result is clipped to each box's
    image (`image_wh` (N, 2) width, height) and its corners re-ordered so x0 <= x1, y0 <= y1."""
    size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    std = (fraction * size).clamp(max=max_px).repeat(1, 2)
    noisy = boxes + torch.randn(boxes.shape, dtype=boxes.dtype, device=boxes.device) * std
    wh = image_wh.to(boxes.dtype)
    return points_to_boxes(clip_boxes(noisy, wh[:, 1:], wh[:, :1]).unflatten(-1, (2, 2)))


def validate_boxes(boxes: torch.Tensor, height: float, width: float, what: str = "boxes", tol: float = 1.0) -> None:
    """Raise ValueError unless `boxes` is a finite (N, 4) XYXY tensor with x0 <= x1, y0 <= y1, inside the
    `width` x `height` image up to `tol` pixels. `what` names the input in the message."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{what}: expected shape (N, 4) XYXY, got {tuple(boxes.shape)}")
    # numpy on CPU: this runs for every image of every batch, where a dozen tiny torch ops cost ~10x more
    b = boxes.detach().cpu().double().numpy()
    if not np.isfinite(b).all():
        raise ValueError(f"{what}: non-finite coordinates in {boxes.tolist()}")
    bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        raise ValueError(f"{what}: boxes with x1 < x0 or y1 < y0 (XYXY expected): {b[bad].tolist()}")
    out = (b[:, :2] < -tol).any(1) | (b[:, 2] > width + tol) | (b[:, 3] > height + tol)
    if out.any():
        raise ValueError(
            f"{what}: boxes outside the {width:g}x{height:g} image: {b[out].tolist()}"
        )
