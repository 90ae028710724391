from .base import PrefixLM
from .decoding import Generated, generate
from .git import GIT_PRESETS, GITCache, GITDecoderLM
from .location_head import MLPLocationHead, MapAttentionLocationHead, cell_targets, points_to_boxes
from .t5 import T5_PRESETS, T5PrefixLM, build_t5_config

__all__ = [
    "GITCache",
    "GITDecoderLM",
    "GIT_PRESETS",
    "Generated",
    "MLPLocationHead",
    "MapAttentionLocationHead",
    "PrefixLM",
    "T5PrefixLM",
    "T5_PRESETS",
    "build_t5_config",
    "cell_targets",
    "generate",
    "points_to_boxes",
]
