"""Drawing PixelLLM outputs with OpenCV: per-word traces, boxes with captions, blended masks, and a caption strip
under the picture. Deterministic: the same output always gives the same pixels.

    vis = Visualizer(image_rgb)
    picture = vis.draw_outputs(predictor(image_rgb))   # (H', W', 3) uint8 RGB
    save_image("out.png", picture)
"""
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from ..tasks import get_task
from .serialization import atomic_write_bytes

__all__ = ["PALETTE", "Visualizer", "save_image"]

Color = Tuple[int, int, int]

# 20 distinct RGB colours (Sasha Trubetskoy's list); word j of a trace and query k of an image use entry
# j % 20 / k % 20.
PALETTE: Tuple[Color, ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
    (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 225, 25),
)
_BLACK: Color = (0, 0, 0)
_WHITE: Color = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only; show anything else as "?" rather than garbage.
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


class Visualizer:
    """
    Args:
        image: (H, W, 3) uint8 RGB image in original pixels (the frame of the model's outputs).
        min_size: a smaller image is upscaled so its longest side is `min_size`, keeping labels legible;
            `self.scale` maps original pixels to picture pixels (the caption strip is added below, so it
            never shifts them).

    Attributes:
        radius: radius of a word marker, picture pixels. A word's marker is a disc of its PALETTE colour of this
            radius centred on its predicted point, ringed in black; later words are drawn over earlier ones.
    """

    def __init__(self, image: np.ndarray, min_size: int = 512):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"Visualizer: expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        H, W = image.shape[:2]
        self.scale = max(1.0, min_size / max(H, W))
        if self.scale > 1:
            size = (int(round(W * self.scale)), int(round(H * self.scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        self.canvas = np.ascontiguousarray(image).copy()
        side = max(self.canvas.shape[:2])
        self.radius = max(4, int(round(side / 110)))
        self.thickness = max(1, int(round(side / 400)))
        self.font_scale = max(0.45, side / 1100)
        self.lines: List[Tuple[str, Optional[Color]]] = []
        self._labels: List[Tuple[int, int, int, int]] = []  # boxes of the labels drawn so far (picture pixels)

    # --------------------------------------------------------------------------------------------- primitives
    def _xy(self, points) -> np.ndarray:
        """(..., 2) original pixels -> int picture pixels."""
        return np.round(_numpy(points).astype(np.float64) * self.scale).astype(np.int64)

    def draw_text(self, text: str, org: Sequence[int], color: Color, avoid: bool = True) -> None:
        """`text` with its baseline-left corner near `org` (picture pixels), in `color` on a black plate (readable
        on any image), shifted to stay inside the picture and, with `avoid`, moved down past labels drawn before
        it instead of over them."""
        text = _ascii(text)
        (tw, th), base = cv2.getTextSize(text, _FONT, self.font_scale, self.thickness)
        h, w = self.canvas.shape[:2]
        x = int(min(max(org[0], 2), max(2, w - tw - 2)))
        y = int(min(max(org[1], th + 2), max(th + 2, h - base - 2)))
        while avoid and any(x < x1 and x + tw > x0 and y - th - 2 < y1 and y + base + 2 > y0 for x0, y0, x1, y1 in self._labels):
            if y + th + base + 4 > h - base - 2:
                break
            y += th + base + 4
        self._labels.append((x - 2, y - th - 2, x + tw + 2, y + base + 2))
        cv2.rectangle(self.canvas, (x - 2, y - th - 2), (x + tw + 2, y + base + 2), _BLACK, -1)
        cv2.putText(self.canvas, text, (x, y), _FONT, self.font_scale, color, self.thickness, cv2.LINE_AA)

    def draw_trace(self, words: Sequence[str], points) -> None:
        """Per-word trace: the word-to-word path (white on black), each word's number (1, 2, ... in reading order;
        the caption strip is the legend) next to its point, then each word's marker at its point in
        PALETTE[j % 20].

        Args:
            words: W words. points: (W, 2) (x, y) per word, original pixels.
        """
        pts = self._xy(points).reshape(-1, 2)
        if len(pts) != len(words):
            raise ValueError(f"draw_trace: {len(words)} words but {len(pts)} points")
        if len(pts) > 1:
            path = [pts.astype(np.int32).reshape(-1, 1, 2)]
            cv2.polylines(self.canvas, path, False, _BLACK, self.thickness + 3, cv2.LINE_AA)
            cv2.polylines(self.canvas, path, False, _WHITE, self.thickness + 1, cv2.LINE_AA)
        r = self.radius
        for j, (x, y) in enumerate(pts):
            self.draw_text(str(j + 1), (x + r + 2, y - r - 2), PALETTE[j % len(PALETTE)])
        # Markers last, so no label or path covers a word's point.
        for j, (x, y) in enumerate(pts):
            cv2.circle(self.canvas, (int(x), int(y)), r + 1, _BLACK, -1, cv2.LINE_8)
            cv2.circle(self.canvas, (int(x), int(y)), r, PALETTE[j % len(PALETTE)], -1, cv2.LINE_8)

    def draw_box(self, box, color: Color, label: Optional[str] = None) -> None:
        """An XYXY box (original pixels) outlined in `color`, with `label` above its top-left corner."""
        x0, y0, x1, y1 = self._xy(np.asarray(_numpy(box), dtype=np.float64).reshape(2, 2)).reshape(4).tolist()
        cv2.rectangle(self.canvas, (x0, y0), (x1, y1), _BLACK, self.thickness + 2, cv2.LINE_8)
        cv2.rectangle(self.canvas, (x0, y0), (x1, y1), color, self.thickness, cv2.LINE_8)
        if label:
            self.draw_text(label, (x0 + 2, y0 - self.thickness - 3), color)

    def draw_points(self, points, color: Color) -> None:
        """Prompt points (P, 2) (original pixels) as crosses."""
        size = 6 * self.radius
        for x, y in self._xy(points).reshape(-1, 2):
            cv2.drawMarker(self.canvas, (int(x), int(y)), _BLACK, cv2.MARKER_CROSS, size, self.thickness + 5)
            cv2.drawMarker(self.canvas, (int(x), int(y)), color, cv2.MARKER_CROSS, size, self.thickness + 2)

    def draw_mask(self, mask, color: Color, alpha: float = 0.45) -> None:
        """Blend an (H, W) bool mask (original pixels) over the picture: pixel = (1 - alpha) * pixel +
        alpha * color inside the mask, outlined in `color`."""
        m = _numpy(mask).astype(np.uint8)
        h, w = self.canvas.shape[:2]
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        inside = m.astype(bool)
        blended = (1 - alpha) * self.canvas[inside].astype(np.float64) + alpha * np.asarray(color, dtype=np.float64)
        self.canvas[inside] = np.round(blended).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(self.canvas, contours, -1, color, self.thickness, cv2.LINE_8)

    def add_line(self, text: str, color: Optional[Color] = None) -> None:
        """A line of the caption strip under the picture (wrapped to its width), after a `color` swatch."""
        self.lines.append((_ascii(text), color))

    # --------------------------------------------------------------------------------------------- outputs
    def draw_outputs(self, output: Dict, texts: Optional[Sequence[str]] = None, points=None, max_regions: int = 20) -> np.ndarray:
        """Draw one image's model output (docs/DESIGN.md §3) and return the picture.

        By what the output's task is (`pixelllm_d2.tasks`): whole-image captions (caption, trace): the per-word
        trace of each caption, the caption in the strip. Box prompts (region): each query's box (or its prompt
        `points`, (P, 2) original pixels) in its colour, numbered, its caption in the strip. A box read at the
        last word (refer): each query's mask (when present) and box labelled with its text (`texts`, default the
        model's caption). The detector's (densecap): the `max_regions` best-scoring boxes with their captions.
        Returns:
            (H', W', 3) uint8 RGB: the (possibly upscaled) image plus the caption strip.
        """
        task = get_task(output["task"])
        captions = output["captions"]
        boxes = _numpy(output["pred_boxes"])
        if task.queries == "detector":
            scores = _numpy(output["scores"]).reshape(-1)
            for rank, k in enumerate(np.argsort(-scores, kind="stable")[:max_regions]):
                color = PALETTE[rank % len(PALETTE)]
                self.draw_box(boxes[k], color, str(rank + 1))
                self.add_line(f"{rank + 1}: {captions[k]} ({scores[k]:.2f})", color)
        elif task.prompt_box == "query":
            for k, caption in enumerate(captions):
                color = PALETTE[k % len(PALETTE)]
                if points is not None:
                    self.draw_points(points, color)
                else:
                    self.draw_box(boxes[k], color, str(k + 1))
                self.add_line(f"{k + 1}: {caption}", color)
        elif task.box_at_last_word:
            used: List[Color] = []
            for k, caption in enumerate(captions):
                region = output["pred_masks"][k] if "pred_masks" in output else None
                color = self.contrasting_color(region if region is not None else boxes[k], used)
                used.append(color)
                text = texts[k] if texts is not None else caption
                if "pred_masks" in output:
                    self.draw_mask(output["pred_masks"][k], color)
                self.draw_box(boxes[k], color, text)
                self.add_line(f"{k + 1}: \"{text}\"", color)
        else:
            for k, caption in enumerate(captions):
                words = output["words"][k]
                self.draw_trace(words, output["word_points"][k])
                self.add_line(f"caption: {caption}")
                self.add_line("words: " + "  ".join(f"{j + 1} {w}" for j, w in enumerate(words)))
        return self.get_image()

    def contrasting_color(self, region, used: Sequence[Color] = ()) -> Color:
        """The PALETTE colour farthest (RGB distance) from the mean colour of `region` (an (H, W) bool mask or an
        XYXY box, original pixels) in the picture, among those not in `used`: a mask stays visible on its object."""
        h, w = self.canvas.shape[:2]
        r = _numpy(region)
        if r.ndim == 2:
            m = r.astype(np.uint8)
            if m.shape != (h, w):
                m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
            pixels = self.canvas[m.astype(bool)]
        else:
            x0, y0, x1, y1 = self._xy(np.asarray(r, dtype=np.float64).reshape(2, 2)).reshape(4).tolist()
            pixels = self.canvas[max(y0, 0) : max(y1, y0 + 1), max(x0, 0) : max(x1, x0 + 1)].reshape(-1, 3)
        mean = pixels.reshape(-1, 3).mean(axis=0) if pixels.size else np.full(3, 127.0)
        choices = [c for c in PALETTE if c not in used] or list(PALETTE)
        return max(choices, key=lambda c: float(np.linalg.norm(np.asarray(c, dtype=np.float64) - mean)))

    def _wrap(self, text: str, width: int) -> List[str]:
        lines, current = [], ""
        for word in text.split(" "):
            trial = f"{current} {word}" if current else word
            if current and cv2.getTextSize(trial, _FONT, self.font_scale, self.thickness)[0][0] > width:
                lines.append(current)
                current = word
            else:
                current = trial
        return lines + [current]

    def get_image(self) -> np.ndarray:
        """The picture so far: the drawn image with the caption strip (white, black text) appended below."""
        if not self.lines:
            return self.canvas.copy()
        w = self.canvas.shape[1]
        (_, th), base = cv2.getTextSize("Ag", _FONT, self.font_scale, self.thickness)
        line_h, pad = th + base + 6, 6
        swatch = th + base
        rows = []
        for text, color in self.lines:
            for i, part in enumerate(self._wrap(text, w - swatch - 3 * pad)):
                rows.append((part, color if i == 0 else None))
        strip = np.full((len(rows) * line_h + 2 * pad, w, 3), 255, dtype=np.uint8)
        for i, (part, color) in enumerate(rows):
            top = pad + i * line_h
            if color is not None:
                cv2.rectangle(strip, (pad, top + 2), (pad + swatch, top + 2 + swatch), color, -1)
                cv2.rectangle(strip, (pad, top + 2), (pad + swatch, top + 2 + swatch), _BLACK, 1)
            cv2.putText(strip, part, (2 * pad + swatch, top + 2 + th), _FONT, self.font_scale, _BLACK, self.thickness, cv2.LINE_AA)
        return np.concatenate([self.canvas, strip], axis=0)


def save_image(path: str, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG, atomically."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())
