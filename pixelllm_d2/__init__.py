"""pixelllm_d2: Pixel-Aligned Language Models (PixelLLM) in PyTorch, in detectron2's shape."""
from .config import get_cfg

__version__ = "0.1.0"
__all__ = ["get_cfg", "__version__"]
