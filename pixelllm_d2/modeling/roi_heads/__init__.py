from ..build import ROI_HEADS_REGISTRY
from .prompt_roi_heads import PromptROIHeads

__all__ = ["PromptROIHeads", "build_roi_heads"]


def build_roi_heads(cfg):
    """The ROI head named by cfg.MODEL.ROI_HEADS.NAME."""
    return ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)(cfg)
