"""Registries of the model's components and `build_model`.

Importing `pixelllm_d2.modeling` registers every builtin component; a user's own component is registered with
`@BACKBONE_REGISTRY.register()` (etc.) and selected by name in the config.
"""
import logging

import torch
from fvcore.common.registry import Registry

__all__ = [
    "META_ARCH_REGISTRY",
    "BACKBONE_REGISTRY",
    "PROMPT_EXTRACTOR_REGISTRY",
    "LANGUAGE_MODEL_REGISTRY",
    "LOCATION_HEAD_REGISTRY",
    "PROPOSAL_GENERATOR_REGISTRY",
    "ROI_HEADS_REGISTRY",
    "build_model",
    "resolve_device",
]

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = "Whole models (cfg.MODEL.META_ARCHITECTURE), called with the cfg."

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = "Image encoders producing the fused feature map (cfg.MODEL.BACKBONE.NAME)."

PROMPT_EXTRACTOR_REGISTRY = Registry("PROMPT_EXTRACTOR")
PROMPT_EXTRACTOR_REGISTRY.__doc__ = (
    "Prompt feature extractors: image map + prompt tokens -> visual tokens per prompt "
    "(cfg.MODEL.PIXELLLM.PROMPT_EXTRACTOR.NAME)."
)

LANGUAGE_MODEL_REGISTRY = Registry("LANGUAGE_MODEL")
LANGUAGE_MODEL_REGISTRY.__doc__ = "Prefix language models (cfg.MODEL.PIXELLLM.LANGUAGE.NAME)."

LOCATION_HEAD_REGISTRY = Registry("LOCATION_HEAD")
LOCATION_HEAD_REGISTRY.__doc__ = "Per-token location heads: decoder states -> two corners (cfg.MODEL.PIXELLLM.LOCATION_HEAD.NAME)."

PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
PROPOSAL_GENERATOR_REGISTRY.__doc__ = "Class-agnostic proposal generators for dense captioning."

ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
ROI_HEADS_REGISTRY.__doc__ = "Region heads that turn proposals into captioned, refined detections."


def resolve_device(name: str) -> torch.device:
    """cfg.MODEL.DEVICE -> torch.device; "auto" picks CUDA when available. Asking for CUDA on a machine without
    it is an error rather than a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"MODEL.DEVICE={name!r} but CUDA is not available; use MODEL.DEVICE cpu (or auto)")
    return dev


def build_model(cfg, device=None) -> torch.nn.Module:
    """Build the model named by cfg.MODEL.META_ARCHITECTURE and move it to `device` (default cfg.MODEL.DEVICE;
    pass torch.device("meta") to count parameters without allocating them). Component weights named in the cfg
    (SAM / EVA02 / T5 / LoRA checkpoints) are loaded; cfg.MODEL.WEIGHTS is loaded by the checkpointer, not here."""
    device = resolve_device(cfg.MODEL.DEVICE) if device is None else torch.device(device)
    meta_arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if device.type == "meta":
        with torch.device("meta"):
            model = meta_arch(cfg)
    else:
        model = meta_arch(cfg)
        model.load_component_weights()
        model.to(device)
    logging.getLogger(__name__).debug("built %s", cfg.MODEL.META_ARCHITECTURE)
    return model
