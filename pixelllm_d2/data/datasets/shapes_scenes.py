"""Scenes of the embedded "shapes" benchmark: sampling and drawing.

A scene is W x H pixels (each in [192, 320]) on a light background (solid, gradient, or solid with mild noise),
holding 2-4 axis-aligned objects (circle, square, triangle with its apex up) in one of four saturated colours and
two sizes (small: 14-18% of the short side; large: 28-36%). Object boxes keep a gap between each other and from the
border, and at most two objects share colour and shape, so every object has an unambiguous description.
"""
from dataclasses import dataclass
from typing import List, Tuple

import cv2
import numpy as np

from .shapes_text import COLOR_RGB, COLORS, SHAPES, SIZES

__all__ = ["ShapeObject", "sample_scene", "render_scene"]

SIDE_RANGE = (192, 320)  # scene width / height, pixels
SIZE_FRACTION = {"small": (0.14, 0.18), "large": (0.28, 0.36)}  # object side / scene short side
BORDER_GAP = 4  # pixels between any object box and the image border
OBJECT_GAP = 6  # pixels between any two object boxes
CIRCLE_VERTICES = 48  # a multiple of 4, so the polygon touches its box on all four sides


@dataclass
class ShapeObject:
    """One object: `shape`, `color`, `size` words and its `box` [x0, y0, x1, y1] in pixels (a square box)."""

    shape: str
    color: str
    size: str
    box: Tuple[float, float, float, float]

    def polygon(self) -> np.ndarray:
        """float [K, 2] outline (x, y) in pixels; the drawn pixels and the mask both come from it."""
        x0, y0, x1, y1 = self.box
        if self.shape == "square":
            return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
        if self.shape == "triangle":
            return np.array([[(x0 + x1) / 2, y0], [x1, y1], [x0, y1]], dtype=np.float64)
        a = np.arange(CIRCLE_VERTICES) * (2 * np.pi / CIRCLE_VERTICES)
        r = (x1 - x0) / 2
        return np.stack([(x0 + x1) / 2 + r * np.cos(a), (y0 + y1) / 2 + r * np.sin(a)], axis=1)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Light, low-saturation background: every channel stays >= 165 (object colours each have one <= 60)."""

    def light_color():
        gray = rng.uniform(200, 238)
        return np.clip(gray + rng.uniform(-14, 14, size=3), 185, 250).astype(np.float32)

    kind = int(rng.integers(3))
    img = np.empty((height, width, 3), dtype=np.float32)
    img[:] = light_color()
    if kind == 1:  # linear gradient in a random direction
        delta = light_color() - img[0, 0]
        angle = rng.uniform(0, 2 * np.pi)
        xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
        t = xs[None] * np.cos(angle) + ys[:, None] * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img += t[..., None] * delta
    elif kind == 2:  # mild, blotchy noise (drawn at 1/4 resolution: smooth, and compact as PNG)
        noise = rng.normal(0.0, 6.0, size=((height + 3) // 4, (width + 3) // 4, 3)).astype(np.float32)
        img += cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _place(rng, sides: List[float], width: int, height: int, tries: int = 200):
    """Non-overlapping square boxes of the given sides, or None when they don't fit."""
    boxes: List[Tuple[float, float, float, float]] = []
    for s in sides:
        for _ in range(tries):
            x0 = rng.uniform(BORDER_GAP, width - BORDER_GAP - s)
            y0 = rng.uniform(BORDER_GAP, height - BORDER_GAP - s)
            box = (x0, y0, x0 + s, y0 + s)
            if all(
                box[0] >= b[2] + OBJECT_GAP or b[0] >= box[2] + OBJECT_GAP
                or box[1] >= b[3] + OBJECT_GAP or b[1] >= box[3] + OBJECT_GAP
                for b in boxes
            ):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def sample_scene(rng: np.random.Generator) -> Tuple[int, int, List[ShapeObject]]:
    """Draw a scene's size and objects.

    Returns:
        width, height (pixels) and 2-4 `ShapeObject`s with boxes rounded to 0.01 pixel.
    """
    width, height = (int(v) for v in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, size=2))
    short = min(width, height)
    while True:
        n = int(rng.integers(2, 5))
        attrs = [(SHAPES[rng.integers(3)], COLORS[rng.integers(4)], SIZES[rng.integers(2)]) for _ in range(n)]
        if max(sum((a[0], a[1]) == (b[0], b[1]) for b in attrs) for a in attrs) > 2:
            continue
        sides = [short * rng.uniform(*SIZE_FRACTION[size]) for _, _, size in attrs]
        boxes = _place(rng, sides, width, height)
        if boxes is not None:
            objects = [
                ShapeObject(shape, color, size, tuple(round(float(v), 2) for v in box))
                for (shape, color, size), box in zip(attrs, boxes)
            ]
            return width, height, objects


def render_scene(rng: np.random.Generator, width: int, height: int, objects: List[ShapeObject]) -> np.ndarray:
    """Draw the scene: uint8 [H, W, 3] RGB."""
    img = np.ascontiguousarray(_background(rng, height, width))
    for o in objects:
        pts = np.rint(o.polygon() * 16).astype(np.int32)  # 4 fractional bits (shift=4)
        cv2.fillPoly(img, [pts], COLOR_RGB[o.color], lineType=cv2.LINE_8, shift=4)
    return img
