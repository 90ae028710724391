"""The words and text templates of the embedded "shapes" benchmark.

The generator writes only the words of `pixelllm_d2.text.shapes_vocabulary`, which the "shapes" tokenizer is
trained on; a test checks that no generated text maps to the unknown token.
Texts use no punctuation: the word-level tokenizer splits on white space only.

The text functions take objects with `shape`, `color`, `size` and `box` ([x0, y0, x1, y1] pixels) attributes
(`shapes_scenes.ShapeObject`).
"""
from typing import List, Sequence

import numpy as np

from ...text.shapes_vocabulary import COLORS, POSITIONS, SHAPES, SIZES, vocabulary  # noqa: F401  (re-exported)

# Saturated RGB fill of each colour; every one has a channel <= 60, which no (light) background has.
COLOR_RGB = {"red": (220, 40, 40), "green": (40, 165, 60), "blue": (40, 80, 225), "yellow": (240, 205, 25)}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def region_caption(obj) -> str:
    """Dense / region caption of one object, e.g. "large blue square"."""
    return f"{obj.size} {obj.color} {obj.shape}"


def narrative_utterances(objects_left_to_right: Sequence) -> List[str]:
    """The utterances of a narrative naming the objects in order: ["a small red circle", "and a large blue
    square", ...]; the caption is their concatenation with single spaces."""
    return [("and " if i else "") + f"a {region_caption(o)}" for i, o in enumerate(objects_left_to_right)]


def image_captions(objects_left_to_right: Sequence, rng: np.random.Generator) -> List[str]:
    """2-5 COCO-style captions of a scene with varied wording; the first is always the plain list
    ("a red circle and a blue square")."""
    plain = " and ".join(f"a {o.color} {o.shape}" for o in objects_left_to_right)
    sized = " and ".join(f"a {region_caption(o)}" for o in objects_left_to_right)
    others = [
        sized,
        f"an image with {plain}",
        f"a picture of {plain}",
        f"there are {NUMBER_WORDS[len(objects_left_to_right)]} shapes in the image",
    ]
    k = int(rng.integers(1, len(others) + 1))
    return [plain] + [others[j] for j in sorted(rng.permutation(len(others))[:k])]


def _position_phrase(obj, other) -> str:
    """Where `obj` is relative to `other` (same colour and shape, same size), along the axis on which their boxes
    are farther apart; boxes never overlap, so one of the two gaps is positive."""
    gap_x = max(other.box[0] - obj.box[2], obj.box[0] - other.box[2])
    gap_y = max(other.box[1] - obj.box[3], obj.box[1] - other.box[3])
    ocx, ocy = (obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2
    tcx, tcy = (other.box[0] + other.box[2]) / 2, (other.box[1] + other.box[3]) / 2
    if gap_x >= gap_y:
        return "on the left" if ocx < tcx else "on the right"
    return "at the top" if ocy < tcy else "at the bottom"


def referring_expressions(objects: Sequence, index: int, rng: np.random.Generator) -> List[str]:
    """1-3 expressions that single out `objects[index]` among `objects` (at most two objects share colour and
    shape). The first is the shortest unambiguous one: "the red circle" when colour + shape is unique, else with
    the size ("the small red circle"), else with the position ("the red circle on the left"). The others are
    drawn from an over-specified form ("the small red circle on the left") and, when unique in the scene, the
    shape alone ("the circle") or the colour alone ("the red shape")."""
    o = objects[index]
    twins = [p for j, p in enumerate(objects) if j != index and (p.color, p.shape) == (o.color, o.shape)]
    position = ""
    if not twins:
        first = f"the {o.color} {o.shape}"
    elif twins[0].size != o.size:
        first = f"the {o.size} {o.color} {o.shape}"
    else:
        position = " " + _position_phrase(o, twins[0])
        first = f"the {o.color} {o.shape}{position}"
    extra = [f"the {o.size} {o.color} {o.shape}{position}"]
    if sum(p.shape == o.shape for p in objects) == 1:
        extra.append(f"the {o.shape}")
    if sum(p.color == o.color for p in objects) == 1:
        extra.append(f"the {o.color} shape")
    extra = [e for e in extra if e != first]
    k = int(rng.integers(0, min(2, len(extra)) + 1))
    return [first] + [extra[j] for j in sorted(rng.permutation(len(extra))[:k])]
