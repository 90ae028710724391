from .decoding import Generated, generate
from .location_head import MLPLocationHead, points_to_boxes
from .t5 import T5_PRESETS, T5PrefixLM, build_t5_config

__all__ = ["Generated", "MLPLocationHead", "T5PrefixLM", "T5_PRESETS", "build_t5_config", "generate", "points_to_boxes"]
