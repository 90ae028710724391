"""PixelLLM as a detectron2 meta-architecture: detectron2's inputs in, `{"instances": Instances}` out.

Inputs, as detectron2's own models take them: "image" (C, H', W') in `INPUT.FORMAT` (any dtype, any size: a
detectron2 mapper or `DefaultPredictor` may have resized it), "height" / "width" (the original size outputs are
given in). Optional: "task" (default: "densecap" with `MODEL.DENSECAP_ON`, else "caption", which uses the trace
prompt and gives every word a location), "boxes" (N, 4) / "points" (P, 2) for a box-prompted task, "text" (str or
list) for a task that reads given text ("refer"); prompts in original pixels. An input that already is a PixelLLM
model input (it has "context_ids": PixelLLM's mappers in training and evaluation) passes through unchanged.

Outputs: per image {"instances": Instances(image_size=(height, width))} with "pred_boxes" (Boxes), "scores",
"pred_classes" (zeros: one class-agnostic class), "pred_object_descriptions" (GRiT's field: the captions),
"pred_words", "pred_word_points", "pred_word_boxes", "pred_token_boxes", "pred_token_corners" (the raw predicted
corners) (per instance, original pixels), and
"pred_masks" (N, height, width) when the model predicts masks; plus "task". `pixelllm_output` turns it back into
PixelLLM's output dict (docs/DESIGN.md §3).
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.modeling import META_ARCH_REGISTRY as D2_META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances

from ..data.inputs import InputBuilder
from ..data.transforms import resize_crop_flip
from ..modeling.meta_arch.pixelllm import PixelLLM as _PixelLLM
from ..tasks import get_task

__all__ = ["D2PixelLLM", "ObjDescription", "to_instances", "pixelllm_output"]


class ObjDescription:
    """A per-instance list (captions, words, per-word tensors) that `Instances` can index like a tensor field: with
    an int, a slice, a bool mask or an index tensor (GRiT's class of the same name, for the same reason)."""

    def __init__(self, data: Sequence):
        self.data = list(data)

    def __getitem__(self, item):
        if isinstance(item, int):
            return self.data[item]
        if isinstance(item, slice):
            return ObjDescription(self.data[item])
        index = torch.as_tensor(item)
        if index.dtype == torch.bool:
            index = index.nonzero(as_tuple=True)[0]
        return ObjDescription([self.data[int(i)] for i in index.reshape(-1).tolist()])

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        return iter(self.data)

    @staticmethod
    def cat(parts: List["ObjDescription"]) -> "ObjDescription":
        return ObjDescription([x for p in parts for x in p.data])

    def __repr__(self) -> str:
        return f"ObjDescription({self.data!r})"


def to_instances(output: Dict, height: int, width: int) -> Instances:
    """PixelLLM's output dict of one image (docs/DESIGN.md §3) as detectron2 `Instances` (module docstring)."""
    n = len(output["pred_boxes"])
    inst = Instances((int(height), int(width)))
    inst.pred_boxes = Boxes(torch.as_tensor(output["pred_boxes"], dtype=torch.float32).reshape(n, 4))
    inst.scores = torch.as_tensor(output["scores"], dtype=torch.float32).reshape(n)
    inst.pred_classes = torch.zeros(n, dtype=torch.long)
    inst.pred_object_descriptions = ObjDescription(output["captions"])
    inst.pred_words = ObjDescription(output["words"])
    inst.pred_word_points = ObjDescription(output["word_points"])
    inst.pred_word_boxes = ObjDescription(output["word_boxes"])
    inst.pred_token_boxes = ObjDescription(output["token_boxes"])
    inst.pred_token_corners = ObjDescription(output["token_corners"])
    inst.pred_token_ids = ObjDescription(output["token_ids"])
    if "pred_masks" in output:
        inst.pred_masks = output["pred_masks"]
        inst.mask_scores = output["mask_scores"]
    return inst


def pixelllm_output(output: Dict) -> Dict:
    """A detectron2 output {"instances", "task"} back as PixelLLM's output dict; a PixelLLM output unchanged."""
    if "instances" not in output:
        return output
    inst = output["instances"]
    out = {"task": output["task"], "pred_boxes": inst.pred_boxes.tensor, "scores": inst.scores,
           "captions": list(inst.pred_object_descriptions), "words": list(inst.pred_words),
           "word_points": list(inst.pred_word_points), "word_boxes": list(inst.pred_word_boxes),
           "token_boxes": list(inst.pred_token_boxes), "token_corners": list(inst.pred_token_corners),
           "token_ids": list(inst.pred_token_ids)}
    if inst.has("pred_masks"):
        out["pred_masks"], out["mask_scores"] = inst.pred_masks, inst.mask_scores
    return out


# Registered under the name configs use, MODEL.META_ARCHITECTURE "PixelLLM" (a registry takes the class name).
@D2_META_ARCH_REGISTRY.register()
class PixelLLM(_PixelLLM):
    """`PixelLLM` for detectron2's `build_model(cfg)`: built from a detectron2 config with `add_pixelllm_config`,
    the component weights (SAM / EVA02 / T5 / LoRA) loaded as `pixelllm_d2.modeling.build_model` loads them; takes
    detectron2's inputs and returns `{"instances": ...}` in evaluation (module docstring). Training takes PixelLLM's
    model inputs (its data loader), as `PixelLLM` does."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.default_task = "densecap" if cfg.MODEL.DENSECAP_ON else "caption"
        self.input_format = cfg.INPUT.FORMAT
        self._cfg = cfg.clone()
        self._builder = None
        if not any(p.is_meta for p in self.parameters()):
            self.load_component_weights()

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return super().forward(batched_inputs)
        inputs = [x if "context_ids" in x else self._from_detectron2(x) for x in batched_inputs]
        outputs = self.inference(inputs)
        return [{"instances": to_instances(out, x["height"], x["width"]), "task": out["task"]} for out, x in zip(outputs, inputs)]

    @property
    def builder(self) -> InputBuilder:
        """PixelLLM's input path (built on first use: it needs the tokenizer)."""
        if self._builder is None:
            self._builder = InputBuilder(self._cfg)
        return self._builder

    def _from_detectron2(self, x: Dict) -> Dict:
        """A detectron2 input (module docstring) as a PixelLLM model input."""
        image = torch.as_tensor(x["image"]).detach().cpu()
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"'image' must be (C, H, W) with C = 3 (or 1), got {tuple(image.shape)}")
        pixels = image.float().round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        elif self.input_format == "BGR":
            pixels = pixels[:, :, ::-1]
        pixels = np.ascontiguousarray(pixels)
        h_in, w_in = pixels.shape[:2]
        height, width = int(x.get("height", h_in)), int(x.get("width", w_in))
        task = get_task(x.get("task", self.default_task))
        sx, sy = w_in / width, h_in / height  # prompts are in original pixels; the image may be resized
        boxes = None if x.get("boxes") is None else (np.asarray(x["boxes"], dtype=np.float64).reshape(-1, 4) * [sx, sy, sx, sy]).tolist()
        points = None if x.get("points") is None else np.asarray(x["points"], dtype=np.float64).reshape(-1, 2) * [sx, sy]
        texts = x.get("text")
        texts = [texts] if isinstance(texts, str) else texts
        prompt = "TRACE" if task.queries == "captions" else None  # as PixelLLMPredictor: words located
        queries = self.builder.prompt_queries(task, boxes=boxes, points=points, texts=texts, prompt=prompt)
        tfms, h, w = resize_crop_flip(h_in, w_in, self.image_size)
        out = self.builder.model_input(pixels, task, queries, tfms, h, w)
        out.update(height=height, width=width, file_name=x.get("file_name", "image"))
        if "image_id" in x:
            out["image_id"] = x["image_id"]
        return out


D2PixelLLM = PixelLLM
