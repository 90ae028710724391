from .pixelllm import PixelLLM
from .queries import TASKS, Queries, gather_queries

__all__ = ["PixelLLM", "Queries", "TASKS", "gather_queries"]
