"""PixelLLM inside detectron2 (installed separately, by its own guide). Importing this package registers
`PixelLLM` in detectron2's `META_ARCH_REGISTRY` and mirrors PixelLLM's datasets into detectron2's catalogs::

    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model
    import pixelllm_d2.d2 as pd2

    cfg = get_cfg()
    pd2.add_pixelllm_config(cfg)
    cfg.merge_from_file("configs/shapes/pixelllm_tiny_shapes.yaml")
    model = build_model(cfg)                      # a D2PixelLLM
    outputs = DefaultPredictor(cfg)(bgr_image)    # {"instances": ... pred_object_descriptions ...}

See README "Using PixelLLM from detectron2" and tools/train_net_detectron2.py.
"""
try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without detectron2
    raise ImportError(
        "pixelllm_d2.d2 needs detectron2, which is not installed: install it by its own guide "
        "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html); pixelllm_d2 itself runs without it"
    ) from e

from .config import SHARED_KEYS, add_pixelllm_config
from .data import register_in_detectron2
from .engine import D2Checkpointer, PixelLLMD2Trainer
from .evaluation import D2Evaluator, build_d2_evaluator
from .modeling import D2PixelLLM, ObjDescription, pixelllm_output, to_instances
from .visualizer import CaptionVisualizer

register_in_detectron2()

__all__ = [
    "SHARED_KEYS", "add_pixelllm_config", "register_in_detectron2", "D2Checkpointer", "PixelLLMD2Trainer", "D2Evaluator",
    "build_d2_evaluator", "D2PixelLLM", "ObjDescription", "pixelllm_output", "to_instances", "CaptionVisualizer",
]
