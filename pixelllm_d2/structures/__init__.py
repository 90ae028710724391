from .boxes import BoxMode, box_iou, clip_boxes, jitter_boxes, points_to_boxes, validate_boxes

__all__ = ["BoxMode", "box_iou", "clip_boxes", "jitter_boxes", "points_to_boxes", "validate_boxes"]
