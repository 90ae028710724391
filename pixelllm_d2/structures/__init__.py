from .boxes import BoxMode, box_iou, clip_boxes, jitter_boxes, points_to_boxes, validate_boxes
from .masks import decode_segmentation, mask_to_rle, segmentation_to_rle
from .queries import FIELDS, Queries, pad_to

__all__ = [
    "BoxMode", "FIELDS", "Queries", "box_iou", "clip_boxes", "decode_segmentation", "jitter_boxes", "mask_to_rle",
    "pad_to", "points_to_boxes", "segmentation_to_rle", "validate_boxes",
]
