"""Masks as COCO run-length encodings (pycocotools): from model masks to json, and from dataset / prediction
segmentations to RLEs and arrays."""
import warnings
from typing import Any, Dict

import numpy as np
import torch
from pycocotools import mask as mask_util

__all__ = ["mask_to_rle", "segmentation_to_rle", "decode_segmentation"]


def mask_to_rle(mask) -> Dict[str, Any]:
    """An (H, W) bool mask (numpy or torch) as a json-ready COCO RLE {"size": [H, W], "counts": str}
    (pycocotools' compressed string; `pycocotools.mask.decode` reads it back)."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask_to_rle: expected an (H, W) mask, got shape {m.shape}")
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def segmentation_to_rle(segm: Any, height: int, width: int, where: str = "segmentation") -> dict:
    """A COCO segmentation (polygon list, uncompressed or compressed RLE) as one compressed RLE of an
    `height` x `width` image; `where` names it in errors."""
    if isinstance(segm, list):
        polygons = [p for p in segm if len(p) >= 6]
        if not polygons:
            return mask_util.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        return mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise ValueError(f"{where}: mask of size {segm['size']} for an image of {height}x{width} (original "
                             "pixels expected)")
        if isinstance(segm["counts"], list):
            return mask_util.frPyObjects(segm, height, width)
        counts = segm["counts"].encode("ascii") if isinstance(segm["counts"], str) else segm["counts"]
        return {"size": [height, width], "counts": counts}
    raise ValueError(f"{where}: 'segmentation' must be COCO polygons or an RLE dict, got {type(segm).__name__}")


def decode_segmentation(segm: Any, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """A COCO segmentation as a uint8 (height, width) mask."""
    with warnings.catch_warnings():  # pycocotools' decode under NumPy 2 warns about __array__(copy=...) each call
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_util.decode(segmentation_to_rle(segm, height, width, where)).astype(np.uint8)
