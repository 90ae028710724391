"""Model components. Importing this package registers every builtin component in its registry."""
from . import backbone, language, mask, prompt, proposal, roi_heads  # noqa: F401  (registration)
from .build import (
    BACKBONE_REGISTRY,
    LANGUAGE_MODEL_REGISTRY,
    LOCATION_HEAD_REGISTRY,
    META_ARCH_REGISTRY,
    PROMPT_EXTRACTOR_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_HEADS_REGISTRY,
    build_model,
    resolve_device,
)
from .meta_arch import PixelLLM

__all__ = [
    "BACKBONE_REGISTRY",
    "LANGUAGE_MODEL_REGISTRY",
    "LOCATION_HEAD_REGISTRY",
    "META_ARCH_REGISTRY",
    "PROMPT_EXTRACTOR_REGISTRY",
    "PROPOSAL_GENERATOR_REGISTRY",
    "ROI_HEADS_REGISTRY",
    "PixelLLM",
    "build_model",
    "resolve_device",
]
