from .mask_head import MaskAdapter, SAMMaskHead

__all__ = ["MaskAdapter", "SAMMaskHead"]
