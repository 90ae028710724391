"""detectron2's `Visualizer` labelling PixelLLM's instances with their captions (GRiT's way): boxes, masks, and
"caption score%" labels, best detections first."""
from typing import Optional

from detectron2.utils.visualizer import Visualizer

__all__ = ["CaptionVisualizer"]


class CaptionVisualizer(Visualizer):
    """`draw_instance_predictions` with each instance's `pred_object_descriptions` as its label."""

    def draw_instance_predictions(self, predictions, jittering: bool = True, max_instances: Optional[int] = 20):
        if predictions.has("scores") and max_instances is not None and len(predictions) > max_instances:
            predictions = predictions[predictions.scores.argsort(descending=True)[:max_instances]]
        boxes = predictions.pred_boxes if predictions.has("pred_boxes") else None
        captions = list(predictions.pred_object_descriptions) if predictions.has("pred_object_descriptions") else None
        scores = predictions.scores.tolist() if predictions.has("scores") else None
        labels = None
        if captions is not None:
            labels = [f"{c} {s * 100:.0f}%" if s is not None else c for c, s in zip(captions, scores or [None] * len(captions))]
        masks = predictions.pred_masks.numpy() if predictions.has("pred_masks") else None
        self.overlay_instances(boxes=boxes, labels=labels, masks=masks)
        return self.output
