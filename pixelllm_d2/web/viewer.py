"""The web viewer's picture: the demo's own picture (tools/demo.py's, drawn by `utils.visualizer`) with, over it,
one hidden highlight per item of the result, and the items as a row of buttons under it. Hovering, focusing or
clicking an item shows its highlight (a click pins it until the next click); no round trip to the server.

Items by task (from the demo's JSON record, docs/DEMO.md):
    caption / region / refer: every word of every result; its highlight is the word's point (a ring) and box.
        The picture underneath is the demo's: for caption the whole trace, numbered in reading order.
    densecap: every detection, best first (the numbers of the picture); its highlight is its box and caption.

`VIEWER_CSS` and `VIEWER_JS` are the gr.HTML component's css_template and js_on_load.
"""
import base64
import html
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from ..utils.visualizer import PALETTE, Visualizer

__all__ = ["EMPTY_HTML", "VIEWER_CSS", "VIEWER_JS", "viewer_html", "preview_html"]

EMPTY_HTML = '<div class="plv-note">Upload an image or pick an example, then run a task.</div>'


def _hex(color: Sequence[int]) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in color)


def _png_data_url(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("could not encode the picture as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _num(v: float) -> str:
    return f"{float(v):.2f}".rstrip("0").rstrip(".")


class _Overlay:
    """SVG highlights in original-image pixels (the SVG's viewBox), sized for a picture of the demo's scale."""

    def __init__(self, width: int, height: int):
        vis = Visualizer(np.zeros((height, width, 3), np.uint8))  # the demo picture's scale and marker size
        self.width, self.height = width, height
        self.canvas_shape = vis.canvas.shape[:2]
        self.ring = 1.8 * vis.radius / vis.scale
        self.font = max(width, height) / 26
        self.parts: List[str] = []

    def _label(self, x: float, y: float, text: str, color: str) -> str:
        x = min(max(x, 2.0), self.width - 2.0)
        y = min(max(y, self.font + 2.0), self.height - 2.0)
        anchor = "end" if x > 0.7 * self.width else "start"
        return (f'<text x="{_num(x)}" y="{_num(y)}" font-size="{_num(self.font)}" text-anchor="{anchor}" fill="{color}" '
                f'stroke="#000" stroke-width="3" paint-order="stroke" vector-effect="non-scaling-stroke">{html.escape(text)}</text>')

    def _box(self, box, color: str) -> str:
        x0, y0, x1, y1 = (float(v) for v in box)
        attrs = f'x="{_num(x0)}" y="{_num(y0)}" width="{_num(x1 - x0)}" height="{_num(y1 - y0)}" fill="none" vector-effect="non-scaling-stroke"'
        return f'<rect {attrs} stroke="#000" stroke-width="6"/><rect {attrs} stroke="{color}" stroke-width="3"/>'

    def word(self, key: str, word: Dict, label: str, color: str) -> None:
        x, y = word["point"]
        ring = (f'<circle cx="{_num(x)}" cy="{_num(y)}" r="{_num(self.ring)}" fill="none" stroke="#fff" stroke-width="6" vector-effect="non-scaling-stroke"/>'
                f'<circle cx="{_num(x)}" cy="{_num(y)}" r="{_num(self.ring)}" fill="none" stroke="{color}" stroke-width="3" vector-effect="non-scaling-stroke"/>')
        text = self._label(x + self.ring + 2, y - self.ring - 2, label, color)
        self.parts.append(f'<g class="plv-hl" data-k="{key}">{self._box(word["box"], color)}{ring}{text}</g>')

    def box(self, key: str, box, label: str, color: str) -> None:
        text = self._label(float(box[0]) + 2, float(box[1]) - 4, label, color)
        self.parts.append(f'<g class="plv-hl" data-k="{key}">{self._box(box, color)}{text}</g>')

    def svg(self, picture: np.ndarray) -> str:
        h, w = self.canvas_shape
        canvas = picture[:h, :w]  # the demo's picture without its caption strip: the strip becomes the buttons
        return (f'<svg class="plv-svg" viewBox="0 0 {self.width} {self.height}" width="{w}" height="{h}" '
                f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">'
                f'<image href="{_png_data_url(canvas)}" x="0" y="0" width="{self.width}" height="{self.height}" '
                f'preserveAspectRatio="none"/>{"".join(self.parts)}</svg>')


def _button(key: str, text: str, color: str, number: Optional[int] = None, title: str = "") -> str:
    num = f"<b>{number}</b> " if number is not None else ""
    tip = f' title="{html.escape(title)}"' if title else ""
    return f'<button type="button" class="plv-item" data-k="{key}" style="--c:{color}"{tip}>{num}{html.escape(text)}</button>'


def _prompt_text(r: Dict) -> str:
    if "points" in r:
        return "points " + "; ".join(f"{_num(x)} {_num(y)}" for x, y in r["points"])
    return "box " + " ".join(_num(v) for v in r["box"])


def viewer_html(record: Dict, picture: np.ndarray) -> str:
    """The viewer of one result.

    Args:
        record: the demo's JSON record of the image (`utils.demo.demo_outputs`).
        picture: the demo's picture of the same output (its top is the image at the Visualizer's scale).
    Returns:
        an HTML fragment: the picture with its highlights, then one row of items per result.
    """
    W, H, task = int(record["width"]), int(record["height"]), record["task"]
    overlay = _Overlay(W, H)
    rows: List[str] = []
    results = record["results"]
    if task == "densecap":
        order = sorted(range(len(results)), key=lambda k: -results[k]["score"])  # the picture's numbering
        items = []
        for rank, k in enumerate(order):
            r, color = results[k], _hex(PALETTE[rank % len(PALETTE)])
            overlay.box(f"d{rank}", r["box"], f"{rank + 1}: {r['caption']}", color)
            items.append(_button(f"d{rank}", f"{r['caption']} ({r['score']:.2f})", color, rank + 1, _prompt_text(r)))
        rows.append(f'<div class="plv-row"><span class="plv-head">{len(results)} detections, best first:</span> {"".join(items)}</div>')
    else:
        for k, r in enumerate(results):
            words = []
            for j, w in enumerate(r["words"]):
                # caption: the trace's colours and numbers; region / refer: each result's words in reading order
                color = _hex(PALETTE[j % len(PALETTE)])
                overlay.word(f"{k}-{j}", w, f"{j + 1} {w['word']}", color)
                words.append(_button(f"{k}-{j}", w["word"], color, j + 1, f"point {_num(w['point'][0])} {_num(w['point'][1])}"))
            if task == "caption":
                head = f"caption (score {r['score']:.2f}):"
            elif task == "region":
                head = f"{k + 1} ({_prompt_text(r)}):"
            else:
                mask = f", mask {r['mask_score']:.2f}" if "mask_rle" in r else ""
                head = f"\u201c{html.escape(r['caption'])}\u201d (box {' '.join(_num(v) for v in r['box'])}{mask}):"
            caption = html.escape(r["caption"], quote=True)
            rows.append(f'<div class="plv-row" data-caption="{caption}"><span class="plv-head">{head}</span> '
                        f'{"".join(words) or "<i>no words</i>"}</div>')
    return (f'<div class="plv" data-task="{task}" data-results="{len(results)}">{overlay.svg(picture)}'
            f'<div class="plv-rows">{"".join(rows)}</div></div>')


def preview_html(image: np.ndarray, note: str, corner: Optional[Sequence[float]] = None) -> str:
    """The image with the first corner of a box being clicked (a cross), and `note` under it."""
    vis = Visualizer(image)
    if corner is not None:
        vis.draw_points([corner], PALETTE[0])
    H, W = image.shape[:2]
    overlay = _Overlay(W, H)
    return f'<div class="plv" data-task="preview">{overlay.svg(vis.get_image())}<div class="plv-note">{html.escape(note)}</div></div>'


VIEWER_CSS = """
.plv { display: flex; flex-direction: column; gap: 8px; }
.plv-svg { width: 100%; max-width: 100%; height: auto; display: block; }
.plv-hl { display: none; }
.plv-hl.plv-on { display: inline; }
.plv-row { line-height: 2.1; }
.plv-head { color: var(--body-text-color-subdued); margin-right: 4px; }
.plv-note { color: var(--body-text-color-subdued); padding: 8px 0; }
.plv-item { border: 2px solid var(--c); border-radius: 6px; background: var(--background-fill-primary);
            color: var(--body-text-color); padding: 0 6px; margin: 1px 2px; cursor: pointer; font: inherit; }
.plv-item b { font-weight: 600; opacity: 0.6; }
.plv-item.plv-on, .plv-item.plv-pin { background: color-mix(in srgb, var(--c) 45%, white); color: #000; }
.plv-item.plv-pin { outline: 2px solid #000; }
"""

# Delegated listeners on the component's root: they outlive every re-render of its content. `watch` (Gradio's)
# drops a pinned item when a new result arrives.
VIEWER_JS = """
let pinned = null;
const show = (key) => {
  element.querySelectorAll('.plv-on').forEach((e) => e.classList.remove('plv-on'));
  if (key !== null) element.querySelectorAll(`[data-k="${key}"]`).forEach((e) => e.classList.add('plv-on'));
};
const item = (e) => e.target.closest && e.target.closest('.plv-item');
element.addEventListener('mouseover', (e) => { const t = item(e); if (t) show(t.dataset.k); });
element.addEventListener('focusin', (e) => { const t = item(e); if (t) show(t.dataset.k); });
element.addEventListener('mouseout', (e) => { const t = item(e); if (t && !t.contains(e.relatedTarget)) show(pinned); });
element.addEventListener('click', (e) => {
  const t = item(e);
  if (!t) return;
  pinned = pinned === t.dataset.k ? null : t.dataset.k;
  element.querySelectorAll('.plv-pin').forEach((x) => x.classList.remove('plv-pin'));
  if (pinned !== null) t.classList.add('plv-pin');
  show(pinned === null ? t.dataset.k : pinned);
});
watch('value', () => { pinned = null; });
"""
