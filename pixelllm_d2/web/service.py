"""The model side of the web viewer: one PixelLLMPredictor shared by every visitor, behind a lock (Gradio runs
events in threads; the predictor and its feature cache are not thread-safe).

Each call reads the image file, runs one task and answers with what tools/demo.py writes for it
(`pixelllm_d2.utils.demo.demo_outputs`): the JSON record and the picture. The predictor keeps the features of the
last image (its feature cache, keyed by the model input's pixels), so a second prompt on the same image does not run
the image encoder again; `num_image_encodings` counts the encoder passes.
"""
import os
import threading
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..data.detection_utils import read_image
from ..utils.demo import demo_outputs
from .prompts import parse_region_prompt

__all__ = ["TASKS", "DemoService", "one_line"]

TASKS = ("caption", "region", "refer", "densecap")

# What bad input raises (the predictor's prompt checks, unreadable files, a model without the asked head): shown
# to the visitor as one line. Anything else is a bug: logged with its traceback, and still one line in the page.
INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError, RuntimeError)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (a KeyError without its quotes), or its type's name."""
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(message).split()) or type(e).__name__


def expressions(text: Optional[str]) -> List[str]:
    """The referring expressions of a text box: one per non-empty line."""
    lines = [" ".join(line.split()) for line in (text or "").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError('refer needs a referring expression: type one, e.g. "the red circle" (one per line)')
    return lines


class DemoService:
    """
    Args:
        predictor: a `PixelLLMPredictor` (its config decides the model, weights and device).
    """

    def __init__(self, predictor):
        self.predictor = predictor
        self._lock = threading.Lock()

    @property
    def num_image_encodings(self) -> int:
        """Image-encoder passes run so far (the predictor's counter)."""
        return self.predictor.num_image_encodings

    def read(self, path: Optional[str], name: Optional[str] = None) -> np.ndarray:
        """The image file as (H, W, 3) uint8 RGB; ValueError / FileNotFoundError with one line when it is missing
        or unreadable."""
        if not path:
            raise ValueError("no image: upload one or pick an example")
        return read_image(path, "RGB", name or os.path.basename(path))

    def run(self, path: Optional[str], task: str, prompt: str = "", text: str = "",
            name: Optional[str] = None) -> Tuple[Dict, np.ndarray]:
        """Run `task` on the image file `path`.

        Args:
            task: "caption", "region", "refer" or "densecap".
            prompt: region: boxes or points as text (`prompts.parse_region_prompt`), original pixels.
            text: refer: the expressions, one per line.
            name: the record's "image" field (default: the file's name).
        Returns:
            (record, picture): the demo's JSON record (docs/DEMO.md) and its (H', W', 3) uint8 RGB picture.
        Raises:
            ValueError / TypeError / FileNotFoundError / RuntimeError with a one-line message for bad input.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        name = name or (os.path.basename(path) if path else "image")
        image = self.read(path, name)
        boxes = points = texts = None
        if task == "region":
            boxes, points = parse_region_prompt(prompt)
        elif task == "refer":
            texts = expressions(text)
        with self._lock:
            out = self.predictor(image, task=task, boxes=boxes, points=points, text=texts, input_format="RGB")
        return demo_outputs(out, image, name, texts=texts, points=points)
