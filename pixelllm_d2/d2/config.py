"""`add_pixelllm_config`: PixelLLM's keys in a detectron2 config.

Every key PixelLLM has and detectron2 lacks is added with its default. For the keys both define, one rule: the
value PixelLLM's model, data and trainer read wins, since the meaning is PixelLLM's where it runs PixelLLM
(`MODEL.PIXEL_MEAN / PIXEL_STD` are RGB SAM statistics in 0-255, `INPUT.FORMAT` is RGB, the RPN / ROI / SOLVER
values are the paper's, `SOLVER.CLIP_GRADIENTS.CLIP_TYPE` is "norm", ...: `SHARED_KEYS` lists all 24 whose defaults
differ). Four keys are set for detectron2's own entry points:
- `MODEL.DEVICE`: "cuda" when CUDA is available, else "cpu" (detectron2's `build_model` needs a device string;
  PixelLLM's "auto" is not one);
- `INPUT.MIN_SIZE_TEST` 0: `DefaultPredictor` hands the image over unresized, and the model resizes it with PixelLLM's
  one resizer (longest side to `INPUT.IMAGE_SIZE`), as the test mapper and `PixelLLMPredictor` do;
- `DATALOADER.ASPECT_RATIO_GROUPING` False: PixelLLM pads every image to a square (nothing to group) and its loader
  does not read the key;
- `VERSION` stays detectron2's 2; PixelLLM's YAMLs say `VERSION: 2` too, so detectron2 merges them unchanged (a
  version-1 file would be "upgraded" by detectron2, renaming keys).
Keys only detectron2 has (ResNet, FPN, keypoints, ...) stay and are not read by PixelLLM.
"""
from typing import List, Tuple

import torch

__all__ = ["add_pixelllm_config", "SHARED_KEYS"]

# The keys both configs define whose defaults differ (22); PixelLLM's value is used (see the module docstring).
SHARED_KEYS: Tuple[str, ...] = (
    "INPUT.FORMAT", "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.BACKBONE.NAME",
    "MODEL.DEVICE", "MODEL.META_ARCHITECTURE", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "MODEL.ROI_HEADS.IOU_THRESHOLDS", "MODEL.ROI_HEADS.NAME", "MODEL.RPN.IN_FEATURES", "MODEL.RPN.POST_NMS_TOPK_TEST",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "SOLVER.BASE_LR",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "SOLVER.IMS_PER_BATCH", "SOLVER.LR_SCHEDULER_NAME", "SOLVER.WARMUP_FACTOR",
    "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_BIAS",
)


def _leaves(node, prefix: str = "") -> List[Tuple[str, object]]:
    out = []
    for k, v in node.items():
        if isinstance(v, dict):
            out += _leaves(v, prefix + k + ".")
        else:
            out.append((prefix + k, v))
    return out


def _set(cfg, key: str, value) -> None:
    node_type = type(cfg)
    *path, last = key.split(".")
    node = cfg
    for part in path:
        if part not in node:
            node[part] = node_type()
        node = node[part]
    node[last] = value


def add_pixelllm_config(cfg) -> None:
    """Add PixelLLM's keys to detectron2's `cfg` (from `detectron2.config.get_cfg()`), in place. Call it before
    merging a PixelLLM YAML. See the module docstring for the keys both define."""
    from ..config import get_cfg

    ours = get_cfg()
    frozen = cfg.is_frozen()
    cfg.defrost()
    d2_version = cfg.VERSION
    for key, value in _leaves(ours):
        _set(cfg, key, value if not isinstance(value, list) else list(value))
    cfg.VERSION = d2_version
    if "DATALOADER" in cfg and "ASPECT_RATIO_GROUPING" in cfg.DATALOADER:
        cfg.DATALOADER.ASPECT_RATIO_GROUPING = False  # images are padded to a square: nothing to group
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.INPUT.MIN_SIZE_TEST = 0
    if frozen:
        cfg.freeze()
