from .decoding import Generated, generate
from .location_head import MLPLocationHead, MapAttentionLocationHead, cell_targets, points_to_boxes
from .t5 import T5_PRESETS, T5PrefixLM, build_t5_config

__all__ = [
    "Generated",
    "MLPLocationHead",
    "MapAttentionLocationHead",
    "T5PrefixLM",
    "T5_PRESETS",
    "build_t5_config",
    "cell_targets",
    "generate",
    "points_to_boxes",
]
