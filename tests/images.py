"""Test images: real photos shipped with scikit-image, and a drawn scene of the embedded benchmark's kind (flat
coloured shapes on a light background) with known geometry."""
import os
from typing import Dict, Tuple

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pixelllm_d2.utils.visualizer import PALETTE

# Saturated RGB colours of the scene's shapes.
SCENE_COLORS = {"red": (220, 30, 30), "green": (40, 170, 60), "blue": (30, 60, 210)}


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Tiny models run fastest on one thread; with two, a busy 2-core machine makes every op wait for a core
    (measured: 0.3 s vs 7.5 s for the same demo call under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def real_photos() -> Dict[str, np.ndarray]:
    """{name: (H, W, 3) uint8 RGB}: astronaut 512x512, coffee 600x400, chelsea 451x300 (public domain / CC0)."""
    data = pytest.importorskip("skimage.data")
    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


def save_photos(folder: str) -> Dict[str, str]:
    """Save the real photos (astronaut and chelsea as PNG, coffee as JPEG); {name: path}."""
    paths = {}
    for name, img in real_photos().items():
        paths[name] = os.path.join(folder, f"{name}.{'jpg' if name == 'coffee' else 'png'}")
        Image.fromarray(img).save(paths[name])
    return paths


def draw_shapes_scene(height: int = 192, width: int = 256) -> Tuple[np.ndarray, Dict[str, Dict]]:
    """A red circle (left), a blue square (top right) and a green triangle (bottom right) on a light background,
    each 25-30 % of the short side across.

    Returns:
        image: (height, width, 3) uint8 RGB.
        objects: {"red circle" | "blue square" | "green triangle": {"box": [x0, y0, x1, y1] (pixel-edge
            coordinates), "mask": (height, width) bool}}.
    """
    s = min(height, width)
    img = np.full((height, width, 3), (236, 236, 228), dtype=np.uint8)
    objects = {}

    def add(name, color, draw):
        mask = np.zeros((height, width), np.uint8)
        draw(mask, 1)
        draw(img, SCENE_COLORS[color])
        ys, xs = np.nonzero(mask)
        objects[name] = {"box": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)], "mask": mask.astype(bool)}

    r = int(0.15 * s)
    add("red circle", "red", lambda a, c: cv2.circle(a, (int(0.25 * width), int(0.55 * height)), r, c, -1))
    side = int(0.27 * s)
    x0, y0 = int(0.62 * width), int(0.12 * height)
    add("blue square", "blue", lambda a, c: cv2.rectangle(a, (x0, y0), (x0 + side, y0 + side), c, -1))
    cx, base = int(0.72 * width), int(0.9 * height)
    tri = np.array([[cx - side // 2, base], [cx + side // 2, base], [cx, base - side]], np.int32)
    add("green triangle", "green", lambda a, c: cv2.fillPoly(a, [tri], c))
    return img, objects


def expected_marker_colors(points, scale, radius):
    """Colour at each word's point: the last word whose marker (disc of `radius` inside a black ring) covers it.
    None where a later marker's edge passes within a pixel of the point (rasterisation decides)."""
    c = np.round(np.asarray(points) * scale)
    out = []
    for j in range(len(c)):
        color = PALETTE[j % len(PALETTE)]
        for k in range(j + 1, len(c)):
            d = np.hypot(*(c[k] - c[j]))
            if d <= radius - 1:
                color = PALETTE[k % len(PALETTE)]
            elif d <= radius + 2:
                color = None
        out.append(color)
    return out
