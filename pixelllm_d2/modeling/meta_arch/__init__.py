from .inputs import ImageFeatures, gather_queries
from .pixelllm import PixelLLM

__all__ = ["ImageFeatures", "PixelLLM", "gather_queries"]
