"""PixelLLMPredictor: the user-facing Python API (detectron2's DefaultPredictor, SAM's SamPredictor).

    from pixelllm_d2.config import get_cfg
    from pixelllm_d2.predictor import PixelLLMPredictor

    cfg = get_cfg(); cfg.merge_from_file("configs/shapes/pixelllm_tiny_shapes.yaml")
    cfg.MODEL.WEIGHTS = "output/pixelllm_tiny_shapes/model_final.pth"
    predictor = PixelLLMPredictor(cfg)
    out = predictor("scene.png")                                       # caption + a location per word
    out = predictor(image, task="region", boxes=[[10, 20, 120, 200]])  # caption a box (original pixels)
    out = predictor(image, task="region", points=[[64, 80]])           # ... or one or more points
    out = predictor(image, task="refer", text="the red circle")        # box (+ mask with MODEL.MASK_ON)
    outs = predictor.predict([img_a, img_b], task="caption")           # batched

Every output is the model's output dict of docs/DESIGN.md §3, in original-image pixels.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .data.detection_utils import ImageLike, read_image
from .modeling import build_model
from .modeling.weights import load_into, load_state_dict_file
from .structures import validate_boxes

__all__ = ["PixelLLMPredictor", "read_image", "resize_longest_side", "PREDICTOR_TASKS"]

logger = logging.getLogger(__name__)

PREDICTOR_TASKS = ("caption", "region", "refer", "densecap")

def resize_longest_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image so its longest side is `size`, keeping the aspect ratio (PIL bilinear,
    which low-pass filters when shrinking, as detectron2's ResizeShortestEdge)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))


def _pad_rows(rows: List[List[int]]) -> torch.Tensor:
    # Token id rows -> (len(rows), max length) int64, padded with the pad id 0.
    n = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (n - len(r)) for r in rows], dtype=torch.long)


class PixelLLMPredictor:
    """Build a PixelLLM from a config, load `cfg.MODEL.WEIGHTS`, and run it on raw images.

    Args:
        cfg: a config (cloned; not modified). `MODEL.WEIGHTS`: a full-model checkpoint (safetensors, or a torch
            file read with `weights_only=True`); empty = the weights the config's components load (random for
            the tiny configs). `INPUT.IMAGE_SIZE`: longest side of the model input. `TEST.IMS_PER_BATCH`: images
            per forward pass in `predict`.
        caption_prompt: which configured context prompt the "caption" task uses. "trace" (default,
            `MODEL.PIXELLLM.PROMPTS.TRACE`, "A long image caption: "): the prompt the model learns per-word
            locations with (Localized Narratives), so its word locations are the meaningful ones. "caption"
            (`PROMPTS.CAPTION`): short COCO-style captions; words still get locations from the same head, but
            that prompt never receives location supervision in training.

    Tasks (`task=`), with the model inputs built per docs/DESIGN.md §2:
        "caption": one query, the whole image as prompt box; a caption with a point and box per word.
        "region": one query per box (`boxes`), or one query with all `points`; a caption per query.
        "refer": one query per expression (`text`, a str or a list of str); context = PROMPTS.REFER + text,
            the text is the decoder input and the box is read at its last word; a mask per query with
            MODEL.MASK_ON.
        "densecap": detections with captions (needs a config with MODEL.DENSECAP_ON; the model raises otherwise).
    Boxes are XYXY and points (x, y), both in original-image pixels; they must lie inside the image.
    """

    def __init__(self, cfg, caption_prompt: str = "trace"):
        self.cfg = cfg.clone()
        self.cfg.freeze()
        self.model = build_model(self.cfg)
        if self.cfg.MODEL.WEIGHTS:
            path = self.cfg.MODEL.WEIGHTS
            load_into(self.model, load_state_dict_file(path), f"MODEL.WEIGHTS ({path})")
            logger.info("loaded weights from %s", path)
        self.model.eval()
        if caption_prompt not in ("trace", "caption"):
            raise ValueError(f"caption_prompt must be 'trace' or 'caption', got {caption_prompt!r}")
        self.caption_prompt = caption_prompt
        self.image_size = int(self.model.image_size)
        self.batch_size = max(1, int(self.cfg.TEST.IMS_PER_BATCH))

    @property
    def tokenizer(self):
        return self.model.tokenizer

    # ------------------------------------------------------------------------------------------------- inputs
    def prepare(
        self,
        image: ImageLike,
        task: str = "caption",
        boxes=None,
        points=None,
        text: Union[None, str, Sequence[str]] = None,
        input_format: str = "RGB",
        name: Optional[str] = None,
    ) -> Dict:
        """The model input dict (docs/DESIGN.md §2) of one image; raises ValueError / TypeError / FileNotFoundError
        naming the input (`name`, default the path or "image") when the image or a prompt is invalid.

        Args:
            image, input_format: see `read_image`.
            task: one of PREDICTOR_TASKS.
            boxes: "region": (N, 4) or (4,) XYXY boxes, original pixels.
            points: "region": (P, 2) or (2,) points (x, y), original pixels; all P form one prompt.
            text: "refer": an expression or a list of expressions.
        Returns:
            {"image": uint8 (3, h, w), "height": H, "width": W, "file_name": name, "task": task, and for
            every task but densecap "prompt_boxes" float32 (Q, 4) or "prompt_points" (1, P, 2) with
            "prompt_point_labels" int64 (1, P), "context_ids" int64 (Q, C), "target_ids" int64 (Q, T) (refer)};
            prompt coordinates in resized pixels.
        """
        if name is None:
            name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "image"
        if task not in PREDICTOR_TASKS:
            raise ValueError(f"{name}: task must be one of {PREDICTOR_TASKS}, got {task!r}")
        self._check_prompt_kinds(name, task, boxes, points, text)
        rgb = read_image(image, input_format, name)
        H, W = rgb.shape[:2]
        resized = resize_longest_side(rgb, self.image_size)
        h, w = resized.shape[:2]
        x = dict(image=torch.tensor(resized).permute(2, 0, 1).contiguous(), height=H, width=W, file_name=name, task=task)
        if task == "densecap":
            return x
        scale = torch.tensor([w / W, h / H], dtype=torch.float32)  # per axis: the resized sides are rounded
        size = torch.tensor([float(w), float(h)])
        whole = torch.cat([torch.zeros(2), size])[None]
        tok, prompts, ctx_len = self.tokenizer, self.model.prompts, self.model.max_context_len
        if task == "caption":
            x["prompt_boxes"] = whole
            x["context_ids"] = _pad_rows([tok.encode(prompts[self.caption_prompt], ctx_len)])
        elif task == "region":
            ctx = tok.encode(prompts["region"], ctx_len)
            if boxes is not None:
                b = self._boxes(boxes, H, W, name)
                x["prompt_boxes"] = torch.minimum((b * scale.repeat(2)).clamp(min=0), size.repeat(2))
                x["context_ids"] = _pad_rows([ctx] * len(b))
            else:
                p = self._points(points, H, W, name)
                x["prompt_points"] = torch.minimum(p * scale, size)[None]
                x["prompt_point_labels"] = torch.ones(1, len(p), dtype=torch.long)
                x["context_ids"] = _pad_rows([ctx])
        else:  # refer
            texts = self._texts(text, name)
            x["prompt_boxes"] = whole.repeat(len(texts), 1)
            x["context_ids"] = _pad_rows([tok.encode(prompts["refer"] + t, ctx_len) for t in texts])
            x["target_ids"] = _pad_rows([tok.encode(t, self.model.max_text_len) for t in texts])
        return x

    @staticmethod
    def _check_prompt_kinds(name, task, boxes, points, text) -> None:
        given = {k for k, v in (("boxes", boxes), ("points", points), ("text", text)) if v is not None}
        allowed = {"caption": set(), "densecap": set(), "region": {"boxes", "points"}, "refer": {"text"}}[task]
        extra = sorted(given - allowed)
        if extra:
            raise ValueError(f"{name}: task {task!r} takes no {' / '.join(extra)}")
        if task == "region" and len(given) != 1:
            raise ValueError(f"{name}: task 'region' needs either boxes or points (one of them), got {sorted(given) or 'neither'}")
        if task == "refer" and not given:
            raise ValueError(f"{name}: task 'refer' needs a referring expression (text)")

    @staticmethod
    def _rows(values, width: int, what: str, layout: str, name: str) -> torch.Tensor:
        # An array-like of rows (or a single row) -> (K, width) float32, K >= 1.
        try:
            t = torch.as_tensor(np.asarray(values, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: {what} must be numbers {layout}, got {values!r}") from e
        if t.dim() == 1:
            t = t[None]
        if t.dim() != 2 or t.shape[1] != width or len(t) == 0:
            raise ValueError(f"{name}: {what} must have shape {layout} with at least one row, got {tuple(t.shape)}")
        return t

    def _boxes(self, boxes, H: int, W: int, name: str) -> torch.Tensor:
        b = self._rows(boxes, 4, "boxes", "(N, 4) XYXY", name)
        validate_boxes(b, H, W, what=f"{name}: boxes (XYXY, original-image pixels)", tol=0.0)
        return b

    def _points(self, points, H: int, W: int, name: str) -> torch.Tensor:
        p = self._rows(points, 2, "points", "(P, 2) (x, y)", name)
        bad = ~torch.isfinite(p).all(1) | (p < 0).any(1) | (p[:, 0] > W) | (p[:, 1] > H)
        if bad.any():
            raise ValueError(f"{name}: points outside the {W}x{H} image (original pixels): {p[bad].tolist()}")
        return p

    def _texts(self, text, name: str) -> List[str]:
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError(f"{name}: task 'refer' needs at least one referring expression")
        out = []
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"{name}: empty referring expression {t!r}")
            t = " ".join(t.split())
            ids = self.tokenizer.encode(t)
            if self.tokenizer.unk_id in ids:
                logger.warning("%s: %r has words outside the tokenizer's vocabulary (%s)", name, t, self.tokenizer.name)
            out.append(t)
        return out

    # ------------------------------------------------------------------------------------------------- running
    def run(self, inputs: List[Dict], decode: Optional[Dict] = None) -> List[Dict]:
        """Run the model on prepared inputs (`prepare`), TEST.IMS_PER_BATCH images per forward pass.
        `decode` overrides the configured decoding settings (see PixelLLM.inference)."""
        outputs: List[Dict] = []
        for i in range(0, len(inputs), self.batch_size):
            outputs.extend(self.model.inference(inputs[i : i + self.batch_size], decode=decode))
        return outputs

    def __call__(self, image: ImageLike, task: str = "caption", boxes=None, points=None, text=None, input_format: str = "RGB") -> Dict:
        """Predict on one image. Arguments as in `prepare`. Returns the model's output dict (docs/DESIGN.md §3):
        "pred_boxes" (N, 4), "scores" (N,), "captions", "words", "word_points" (W_i, 2), "word_boxes"
        (W_i, 4), "token_ids", "token_boxes", and "pred_masks" (N, H, W) / "mask_scores" for refer with masks;
        coordinates in original-image pixels."""
        return self.run([self.prepare(image, task, boxes, points, text, input_format)])[0]

    def predict(
        self,
        images: Sequence[ImageLike],
        task: str = "caption",
        boxes: Optional[Sequence] = None,
        points: Optional[Sequence] = None,
        text: Optional[Sequence] = None,
        input_format: str = "RGB",
    ) -> List[Dict]:
        """Predict on a list of images, batched. `boxes`, `points` and `text` are None or hold one entry per
        image (each entry as in `prepare`). Returns one output dict per image, in order."""
        n = len(images)

        def per_image(value, what):
            if value is None:
                return [None] * n
            if len(value) != n:
                raise ValueError(f"predict: {what} must hold one entry per image ({n}), got {len(value)}")
            return list(value)

        b, p, t = per_image(boxes, "boxes"), per_image(points, "points"), per_image(text, "text")
        inputs = [
            self.prepare(img, task, b[i], p[i], t[i], input_format, name=None if isinstance(img, (str, os.PathLike)) else f"image {i}")
            for i, img in enumerate(images)
        ]
        return self.run(inputs)
