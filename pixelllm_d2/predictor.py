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
import hashlib
import logging
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .data.detection_utils import ImageLike, read_image
from .data.inputs import InputBuilder
from .data.transforms import resize_crop_flip
from .modeling import build_model
from .modeling.weights import load_into, load_state_dict_file
from .structures import validate_boxes
from .tasks import PREDICTOR_TASKS, TASKS

__all__ = ["PixelLLMPredictor", "read_image", "PREDICTOR_TASKS"]

logger = logging.getLogger(__name__)


class PixelLLMPredictor:
    """Build a PixelLLM from a config, load `cfg.MODEL.WEIGHTS`, and run it on raw images.

    Args:
        cfg: a config (cloned; not modified). `MODEL.WEIGHTS`: a full-model checkpoint (safetensors, or a torch
            file read with `weights_only=True`); empty = the weights the config's components load (random for
            the tiny configs). `INPUT.IMAGE_SIZE`: longest side of the model input. `INPUT.FORMAT`: channel order
            of numpy images ("RGB" or "BGR"). `TEST.IMS_PER_BATCH`: images per forward pass in `predict`.
        caption_prompt: which configured context prompt the "caption" task uses. "trace" (default,
            `MODEL.PIXELLLM.PROMPTS.TRACE`, "A long image caption: "): the prompt the model learns per-word
            locations with (Localized Narratives), so its word locations are the meaningful ones. "caption"
            (`PROMPTS.CAPTION`): short COCO-style captions; words still get locations from the same head, but
            that prompt never receives location supervision in training.

    Tasks (`task=`, `pixelllm_d2.tasks.PREDICTOR_TASKS`), with the model inputs built by the test-time dataset
    mapper's path (`data.inputs.InputBuilder`, the same resize):
        "caption": one query, the whole image as prompt box; a caption with a point and box per word.
        "region": one query per box (`boxes`), or one query with all `points`; a caption per query.
        "refer": one query per expression (`text`, a str or a list of str); context = PROMPTS.REFER + text,
            the text is the decoder input and the box is read at its last word; a mask per query with
            MODEL.MASK_ON.
        "densecap": detections with captions (needs a config with MODEL.DENSECAP_ON; the model raises otherwise).
    Boxes are XYXY and points (x, y), both in original-image pixels; they must lie inside the image.

    The image's features are computed once and reused while the next call is on the same image (SAM's
    `set_image` pattern): several prompts on one picture run the backbone once. `set_image` encodes ahead.
    """

    def __init__(self, cfg, caption_prompt: str = "trace"):
        self.cfg = cfg.clone()
        self.cfg.freeze()
        if caption_prompt not in ("trace", "caption"):
            raise ValueError(f"caption_prompt must be 'trace' or 'caption', got {caption_prompt!r}")
        if self.cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.cfg.INPUT.FORMAT!r}")
        self.model = build_model(self.cfg)
        if self.cfg.MODEL.WEIGHTS:
            path = self.cfg.MODEL.WEIGHTS
            load_into(self.model, load_state_dict_file(path), f"MODEL.WEIGHTS ({path})")
            logger.info("loaded weights from %s", path)
        self.model.eval()
        self.caption_prompt = caption_prompt
        self.input_format = self.cfg.INPUT.FORMAT
        self.image_size = int(self.model.image_size)
        self.batch_size = max(1, int(self.cfg.TEST.IMS_PER_BATCH))
        self.builder = InputBuilder(self.cfg)
        self.num_image_encodings = 0  # backbone passes run by this predictor (the cache test reads it)
        self._cache_key: Optional[bytes] = None
        self._cache_features = None

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
        input_format: Optional[str] = None,
        name: Optional[str] = None,
    ) -> Dict:
        """The model input dict (docs/DESIGN.md §2) of one image; raises ValueError / TypeError / FileNotFoundError
        naming the input (`name`, default the path or "image") when the image or a prompt is invalid.

        Args:
            image: a path, a PIL image, or an (H, W[, C]) uint8 / uint16 array (see `read_image`).
            input_format: channel order of an array image, "RGB" or "BGR"; default INPUT.FORMAT.
            task: one of PREDICTOR_TASKS.
            boxes: "region": (N, 4) or (4,) XYXY boxes, original pixels.
            points: "region": (P, 2) or (2,) points (x, y), original pixels; all P form one prompt.
            text: "refer": an expression or a list of expressions.
        Returns:
            {"image": uint8 (3, h, w), "height": H, "width": W, "file_name": name, "task": task,
            "prompt_boxes" float32 (Q, 4) or "prompt_points" (1, P, 2) with "prompt_point_labels" int64 (1, P),
            "context_ids" int64 (Q, C), "target_ids" int64 (Q, T) (refer), "query_meta"}; prompt coordinates in
            resized pixels.
        """
        if name is None:
            name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "image"
        t = TASKS.get(task) if isinstance(task, str) else None
        if t is None or not t.predictor:
            offered = tuple(n for n, k in TASKS.items() if k.predictor)
            raise ValueError(f"{name}: task must be one of {offered}, got {task!r}")
        self._check_prompt_kinds(name, t, boxes, points, text)
        rgb = read_image(image, input_format or self.input_format, name)
        H, W = rgb.shape[:2]
        queries = self.builder.prompt_queries(
            t,
            boxes=self._boxes(boxes, H, W, name).tolist() if boxes is not None else None,
            points=self._points(points, H, W, name).numpy() if points is not None else None,
            texts=self._texts(text, name) if text is not None else None,
            prompt=self.caption_prompt.upper() if t.queries == "captions" else None,
        )
        tfms, h, w = resize_crop_flip(H, W, self.image_size)  # the test-time mapper's resize
        x = self.builder.model_input(rgb, t, queries, tfms, h, w)
        x["file_name"] = name
        return x

    @staticmethod
    def _check_prompt_kinds(name, task, boxes, points, text) -> None:
        given = {k for k, v in (("boxes", boxes), ("points", points), ("text", text)) if v is not None}
        if task.prompt_box == "query":
            allowed = {"boxes", "points"}
        elif task.text_at_test == "given":
            allowed = {"text"}
        else:
            allowed = set()
        extra = sorted(given - allowed)
        if extra:
            raise ValueError(f"{name}: task {task.name!r} takes no {' / '.join(extra)}")
        if allowed == {"boxes", "points"} and len(given) != 1:
            raise ValueError(f"{name}: task {task.name!r} needs either boxes or points (one of them), got {sorted(given) or 'neither'}")
        if allowed == {"text"} and not given:
            raise ValueError(f"{name}: task {task.name!r} needs a referring expression (text)")

    @staticmethod
    def _rows(values, width: int, what: str, layout: str, name: str) -> torch.Tensor:
        # An array-like of rows (or a single row) -> (K, width) float64 (what the test mapper reads too), K >= 1.
        try:
            t = torch.as_tensor(np.asarray(values, dtype=np.float64))
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
    def set_image(self, image: ImageLike, input_format: Optional[str] = None) -> None:
        """Encode `image` now (the backbone pass); later calls on the same image reuse it."""
        self._features(self.prepare(image, "caption", input_format=input_format))

    def _features(self, x: Dict):
        # The cache key is the model's input image itself: another picture, size or resize never matches.
        key = hashlib.blake2b(x["image"].numpy().tobytes() + repr(tuple(x["image"].shape)).encode(), digest_size=16).digest()
        if key != self._cache_key:
            with torch.no_grad():
                self._cache_features = self.model.encode_images([x])
            self._cache_key = key
            self.num_image_encodings += 1
        return self._cache_features

    def run(self, inputs: List[Dict], decode: Optional[Dict] = None) -> List[Dict]:
        """Run the model on prepared inputs (`prepare`), TEST.IMS_PER_BATCH images per forward pass.
        `decode` overrides the configured decoding settings (see PixelLLM.inference)."""
        outputs: List[Dict] = []
        for i in range(0, len(inputs), self.batch_size):
            chunk = inputs[i : i + self.batch_size]
            self.num_image_encodings += 1
            outputs.extend(self.model.inference(chunk, decode=decode))
        return outputs

    def __call__(self, image: ImageLike, task: str = "caption", boxes=None, points=None, text=None,
                 input_format: Optional[str] = None, decode: Optional[Dict] = None) -> Dict:
        """Predict on one image. Arguments as in `prepare`. Returns the model's output dict (docs/DESIGN.md §3):
        "pred_boxes" (N, 4), "scores" (N,), "captions", "words", "word_points" (W_i, 2), "word_boxes"
        (W_i, 4), "token_ids", "token_boxes", and "pred_masks" (N, H, W) / "mask_scores" for refer with masks;
        coordinates in original-image pixels. The image's features are reused from the previous call on it."""
        x = self.prepare(image, task, boxes, points, text, input_format)
        return self.model.inference([x], decode=decode, features=self._features(x))[0]

    def predict(
        self,
        images: Sequence[ImageLike],
        task: str = "caption",
        boxes: Optional[Sequence] = None,
        points: Optional[Sequence] = None,
        text: Optional[Sequence] = None,
        input_format: Optional[str] = None,
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
