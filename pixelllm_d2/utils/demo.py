"""What the demo tools share (tools/demo.py, tools/web_demo.py): the default checkpoint, the config they build, and
one image's output as the demo's JSON record and picture. One code path, so the web viewer's API answers with
exactly the JSON the command-line demo writes.

Light at import (no torch): the tools import it before parsing their command line, so `--help` stays fast.
"""
import os
from typing import Dict, Optional, Sequence, Tuple

__all__ = ["default_weights", "setup_cfg", "demo_outputs"]


def default_weights(cfg, repo_root: str = "") -> str:
    """cfg.MODEL.WEIGHTS, else the newest <OUTPUT_DIR>/model_final.{pth,safetensors} (OUTPUT_DIR relative to the
    working directory, then to `repo_root` when given), else ""."""
    if cfg.MODEL.WEIGHTS:
        return cfg.MODEL.WEIGHTS
    if os.path.isabs(cfg.OUTPUT_DIR):
        roots = [cfg.OUTPUT_DIR]
    else:
        roots = [os.path.abspath(cfg.OUTPUT_DIR)] + ([os.path.join(repo_root, cfg.OUTPUT_DIR)] if repo_root else [])
    for root in roots:
        found = [os.path.join(root, f"model_final{ext}") for ext in (".pth", ".safetensors")]
        found = [f for f in found if os.path.isfile(f)]
        if found:
            return max(found, key=os.path.getmtime)
    return ""


def setup_cfg(config_file: str, opts: Sequence[str] = (), cpu: bool = False, repo_root: str = "",
              default_config: Optional[str] = None):
    """The frozen config of a demo: `config_file`, then the `KEY VALUE` overrides `opts`, `MODEL.DEVICE cpu` with
    `cpu`, and MODEL.WEIGHTS resolved by `default_weights` ("" when no checkpoint was found).

    Raises:
        FileNotFoundError: `config_file` does not exist (the message says so when it is `default_config`, the
            tool's built-in default). ValueError / KeyError: a bad override.
    """
    from ..config import get_cfg

    if not os.path.isfile(config_file):
        hint = " (the default embedded-benchmark config; pass --config-file)" if config_file == default_config else ""
        raise FileNotFoundError(f"config file not found: {config_file}{hint}")
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cpu:
        cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = default_weights(cfg, repo_root)
    cfg.freeze()
    return cfg


def demo_outputs(output: Dict, image, name: str, texts: Optional[Sequence[str]] = None,
                 points=None) -> Tuple[Dict, "object"]:
    """One image's model output as the demo reports it.

    Args:
        output: the predictor's output dict for the image (docs/DESIGN.md §3).
        image: (H, W, 3) uint8 RGB, the image the output is in the frame of.
        name: what the record's "image" field says (the demo: the input path).
        texts: "refer": the expressions as given (each result's "caption"). points: "region" with point prompts:
            the (P, 2) prompt points (reported and drawn instead of a box).
    Returns:
        (record, picture): the JSON record of docs/DEMO.md (`serialization.output_to_json`) and the (H', W', 3)
        uint8 RGB picture (`Visualizer.draw_outputs`: the possibly upscaled image plus the caption strip).
    """
    from ..tasks import get_task
    from .serialization import output_to_json
    from .visualizer import Visualizer

    h, w = image.shape[:2]
    given = get_task(output["task"]).text_at_test == "given"
    record = output_to_json(output, name, h, w, texts=texts if given else None, points=points)
    picture = Visualizer(image).draw_outputs(output, texts=texts, points=points)
    return record, picture
