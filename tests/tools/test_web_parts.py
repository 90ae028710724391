"""The web viewer's plain-Python parts (no server): region prompts as text and clicks, the viewer's HTML."""
import re

import numpy as np
import pytest

from pixelllm_d2.web.prompts import click, parse_region_prompt
from pixelllm_d2.web.service import expressions, one_line
from pixelllm_d2.web.viewer import preview_html, viewer_html


@pytest.mark.parametrize(
    "text, boxes, points",
    [
        ("10 20 120 110", [[10, 20, 120, 110]], None),
        (" 10, 20, 120.5, 110 ; 0 0 5 5;", [[10, 20, 120.5, 110], [0, 0, 5, 5]], None),
        ("64 80", None, [[64, 80]]),
        ("64 80; 70 90", None, [[64, 80], [70, 90]]),
    ],
)
def test_region_prompts(text, boxes, points):
    assert parse_region_prompt(text) == (boxes, points)


@pytest.mark.parametrize(
    "text, message",
    [("", "region needs a prompt"), (" ; ", "region needs a prompt"), ("1 2 3", "has 3 numbers"),
     ("1 2 x 4", "not numbers: '1 2 x 4'"), ("1 2 3 4; 5 6", "boxes and points cannot be mixed")],
)
def test_bad_region_prompts(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_region_prompt(text)


def test_clicks_make_boxes_and_points():
    assert click("point", 12.0, 40.5, None) == ("12 40.5", None)
    prompt, corner = click("box", 120, 110, None)  # the first corner waits for the second
    assert (prompt, corner) == (None, [120.0, 110.0])
    assert click("box", 20, 20, corner) == ("20 20 120 110", None)  # ordered XYXY whatever the click order
    assert click("box", 120, 30, [120.0, 110.0]) == (None, [120.0, 30.0])  # an empty box: a new first corner
    with pytest.raises(ValueError, match="click mode"):
        click("lasso", 1, 2, None)


def test_expressions_and_one_line_errors():
    assert expressions(" the red  circle \n\n the blue square") == ["the red circle", "the blue square"]
    with pytest.raises(ValueError, match="refer needs a referring expression"):
        expressions(" \n ")
    assert one_line(ValueError("a\n  b")) == "a b" and one_line(KeyError("k")) == "k" and one_line(ValueError()) == "ValueError"


def _record(task, results, width=256, height=192):
    return {"image": "scene.png", "width": width, "height": height, "task": task, "results": results}


def _words(*words):
    return [{"word": w, "point": [10.0 + 20 * j, 30.0], "box": [0.0, 10.0, 40.0 + 20 * j, 60.0]} for j, w in enumerate(words)]


PICTURE = np.zeros((384 + 40, 512, 3), np.uint8)  # the demo's picture of a 256x192 image: 2x, plus a strip


def test_viewer_has_one_button_and_one_highlight_per_word():
    rec = _record("caption", [{"box": [0, 0, 256, 192], "score": -0.5, "caption": "a red <circle>", "words": _words("a", "red", "<circle>")}])
    page = viewer_html(rec, PICTURE)
    buttons = re.findall(r'<button type="button" class="plv-item" data-k="([^"]+)"', page)
    highlights = re.findall(r'<g class="plv-hl" data-k="([^"]+)"', page)
    assert buttons == highlights == ["0-0", "0-1", "0-2"]
    assert 'viewBox="0 0 256 192" width="512" height="384"' in page  # the picture without its strip, image pixels
    assert 'data-caption="a red &lt;circle&gt;"' in page and "<circle>" not in page.split("</svg>")[1]
    assert '<circle cx="30" cy="30"' in page  # word 2's ring at its point (image pixels)


def test_viewer_lists_detections_best_first():
    results = [{"box": [0, 0, 10 + k, 10], "score": s, "caption": f"c{k}", "words": _words("x")} for k, s in enumerate([0.2, 0.9, 0.5])]
    page = viewer_html(_record("densecap", results), PICTURE)
    assert re.findall(r'data-k="(d\d)"[^>]*><b>(\d)</b> (c\d)', page) == [("d0", "1", "c1"), ("d1", "2", "c2"), ("d2", "3", "c0")]
    assert "3 detections, best first" in page


def test_viewer_of_regions_refer_and_a_clicked_corner():
    regions = [{"points": [[5.0, 6.0]], "score": -1.0, "caption": "red", "words": _words("red")}]
    assert "(points 5 6)" in viewer_html(_record("region", regions), PICTURE)
    refer = [{"box": [1, 2, 30, 40], "score": 1.0, "caption": "the red circle", "words": _words("the", "red", "circle"),
              "mask_rle": {"size": [192, 256], "counts": ""}, "mask_score": 0.83}]
    assert "(box 1 2 30 40, mask 0.83)" in viewer_html(_record("refer", refer), PICTURE)
    page = preview_html(np.zeros((192, 256, 3), np.uint8), "click the opposite corner", corner=[20, 20])
    assert 'data-task="preview"' in page and "click the opposite corner" in page
