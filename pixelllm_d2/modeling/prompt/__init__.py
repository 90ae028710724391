from .extractor import PerTokenLinear, TwoWayPromptExtractor
from .prompt_encoder import SAMPromptEncoder

__all__ = ["PerTokenLinear", "SAMPromptEncoder", "TwoWayPromptExtractor"]
