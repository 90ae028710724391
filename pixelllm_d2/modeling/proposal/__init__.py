from ..build import PROPOSAL_GENERATOR_REGISTRY
from .pyramid import SimpleFeaturePyramid
from .rpn import RPN

__all__ = ["RPN", "SimpleFeaturePyramid", "build_proposal_generator"]


def build_proposal_generator(cfg, in_channels: int):
    """The proposal generator named by cfg.MODEL.PROPOSAL_GENERATOR.NAME on a fused map of `in_channels`."""
    return PROPOSAL_GENERATOR_REGISTRY.get(cfg.MODEL.PROPOSAL_GENERATOR.NAME)(cfg, in_channels=in_channels)
