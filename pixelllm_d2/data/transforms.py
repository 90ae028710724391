"""Geometric transforms of the mapper: resize to the input size, train-time scale jitter + crop + flip.

Built on fvcore's `Transform` / `TransformList` (detectron2's transform machinery): one transform list moves the
image, boxes, points and masks together.
"""
from typing import Tuple

import cv2
import numpy as np
from fvcore.transforms.transform import CropTransform, HFlipTransform, Transform, TransformList

__all__ = ["ResizeTransform", "resize_crop_flip", "resize_shorter_center_crop"]


class ResizeTransform(Transform):
    """Resize an (h, w) image to (new_h, new_w): area averaging when shrinking (no aliasing at VG's 0.1x
    jitter), bilinear when enlarging, nearest for masks."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: int = None) -> np.ndarray:
        if interp is None:
            interp = cv2.INTER_AREA if self.new_h * self.new_w < self.h * self.w else cv2.INTER_LINEAR
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=interp)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = coords[:, 0] * (self.new_w / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h / self.h)
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=cv2.INTER_NEAREST)


def resize_crop_flip(
    height: int,
    width: int,
    image_size: int,
    rng: np.random.Generator = None,
    scale_range: Tuple[float, float] = (1.0, 1.0),
    crop: bool = True,
    flip: bool = False,
) -> Tuple[TransformList, int, int]:
    """The official resize / augmentation: resize so the longest side is `image_size * s` with s drawn from
    `scale_range` (s = 1 without `rng`), then (with `crop`) crop a random window of at most `image_size` per side,
    then (with `flip`) flip horizontally.

    Args:
        height, width: the input image size.
        image_size: INPUT.IMAGE_SIZE.
        rng: drives the scale and the crop position; None: s = 1 (no jitter).
        scale_range: (min, max) multiplier of `image_size`.
        crop: crop to `image_size` (needed whenever s > 1).
        flip: append a horizontal flip.

    Returns:
        the transforms, and the output height and width (both <= image_size when cropping; the longest side is
        exactly image_size when s = 1).
    """
    lo, hi = (float(v) for v in scale_range)
    s = 1.0 if rng is None else (float(rng.uniform(lo, hi)) if hi > lo else lo)
    target = max(1, int(round(image_size * s)))
    ratio = target / max(height, width)
    new_h, new_w = max(1, int(round(height * ratio))), max(1, int(round(width * ratio)))
    tfms = [ResizeTransform(height, width, new_h, new_w)]
    out_h, out_w = new_h, new_w
    if crop and (new_h > image_size or new_w > image_size):
        out_h, out_w = min(new_h, image_size), min(new_w, image_size)
        y0 = int(rng.integers(0, new_h - out_h + 1)) if rng is not None else 0
        x0 = int(rng.integers(0, new_w - out_w + 1)) if rng is not None else 0
        tfms.append(CropTransform(x0, y0, out_w, out_h))
    if flip:
        tfms.append(HFlipTransform(out_w))
    return TransformList(tfms), out_h, out_w


def resize_shorter_center_crop(height: int, width: int, image_size: int) -> Tuple[TransformList, int, int]:
    """The official COCO-caption evaluation geometry: the shorter side resized to `image_size`, then the central
    `image_size` x `image_size` window (a square, unpadded input). Returns the transforms and the output size."""
    ratio = image_size / min(height, width)
    new_h, new_w = max(image_size, int(round(height * ratio))), max(image_size, int(round(width * ratio)))
    y0, x0 = (new_h - image_size) // 2, (new_w - image_size) // 2
    tfms = [ResizeTransform(height, width, new_h, new_w), CropTransform(x0, y0, image_size, image_size)]
    return TransformList(tfms), image_size, image_size
