"""Region prompts of the web viewer, as text and as clicks on the image.

A prompt is one line of numbers in original-image pixels, groups separated by ";":
    "x0 y0 x1 y1"                one box (XYXY)
    "x0 y0 x1 y1; x0 y0 x1 y1"   several boxes, one caption each (tools/demo.py's repeated --box)
    "x y" / "x y; x y"           one or more points that together make one prompt (the demo's repeated --point)
Commas work as well as spaces. Clicks build the same text: in "box" mode two clicks give the two corners of a box,
in "point" mode a click gives a point.
"""
import re
from typing import List, Optional, Sequence, Tuple

__all__ = ["CLICK_MODES", "parse_region_prompt", "format_numbers", "click"]

CLICK_MODES = ("box", "point")

Rows = Optional[List[List[float]]]


def parse_region_prompt(text: str) -> Tuple[Rows, Rows]:
    """(boxes, points) of a prompt line: exactly one of them is a list of rows, the other None.

    Raises:
        ValueError: empty text, a group that is not 2 or 4 numbers, something that is not a number, or boxes
            and points mixed (the model takes one kind per prompt).
    """
    groups = [g for g in (text or "").split(";") if g.strip()]
    if not groups:
        raise ValueError('region needs a prompt: click on the image, or type a box "x0 y0 x1 y1" or a point "x y"')
    rows = []
    for g in groups:
        parts = [p for p in re.split(r"[\s,]+", g.strip()) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"region prompt: not numbers: {g.strip()!r}") from None
        if len(values) not in (2, 4):
            raise ValueError(f"region prompt: {g.strip()!r} has {len(values)} numbers; a box is 4 (x0 y0 x1 y1), a point 2 (x y)")
        rows.append(values)
    sizes = {len(r) for r in rows}
    if len(sizes) > 1:
        raise ValueError("region prompt: boxes and points cannot be mixed (separate prompts)")
    return (rows, None) if sizes == {4} else (None, rows)


def format_numbers(values: Sequence[float]) -> str:
    """'12 40.5 ...': integers without a decimal point, others to 0.1 pixel."""
    return " ".join(str(int(round(v))) if abs(v - round(v)) < 0.05 else f"{v:.1f}" for v in values)


def click(mode: str, x: float, y: float, corner: Optional[Sequence[float]]) -> Tuple[Optional[str], Optional[List[float]]]:
    """One click at (x, y) on the image.

    Args:
        mode: "box" or "point". corner: the first corner of a box clicked before, or None.
    Returns:
        (prompt, corner): `prompt` is the finished prompt text ("x y" for a point, the ordered box for the second
        corner) or None while a box waits for its second corner; `corner` is what to remember for the next click.
    """
    if mode not in CLICK_MODES:
        raise ValueError(f"click mode must be one of {CLICK_MODES}, got {mode!r}")
    if mode == "point":
        return format_numbers([x, y]), None
    if corner is None:
        return None, [float(x), float(y)]
    x0, y0 = corner
    if x0 == x or y0 == y:  # a click on the same row or column gives an empty box: keep waiting for a corner
        return None, [float(x), float(y)]
    box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
    return format_numbers(box), None
