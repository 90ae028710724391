#!/usr/bin/env bash
# Regenerates the pictures in docs/demo/ from the checkpoint of the README's main command
# (output/pixelllm_tiny_shapes/model_final.pth): one per task, from docs/demo/inputs/shapes_scene.png, and the web
# viewer's screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
in=docs/demo/inputs/shapes_scene.png
python tools/demo.py --input "$in" --output docs/demo/caption
python tools/demo.py --input "$in" --output docs/demo/refer --task refer --text "the red circle"
python tools/demo.py --input "$in" --output docs/demo/densecap --task densecap
python tools/demo.py --input "$in" --output docs/demo/region --task region --box 20 20 120 110
# the web viewer's screenshot (docs/demo/web_demo.png) is made by its browser test (headless chromium)
PIXELLLM_DOCS_SCREENSHOT=docs/demo/web_demo.png HF_HUB_OFFLINE=1 python -m pytest -q tests/tools/test_web_demo_browser.py
