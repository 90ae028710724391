"""Reading component weights in their upstream formats, safely (safetensors, or torch files with
`weights_only=True`; never arbitrary unpickling).

- SAM: the official `.pth` (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`), position tables resized to
  the model's input size.
- EVA02: a timm state dict (`.safetensors` / `.pth` / `.bin`), remapped by timm's own checkpoint filter (position
  embedding resize, key renames).
- T5: a local HF folder (`model.safetensors`, sharded safetensors with `model.safetensors.index.json`, or
  `pytorch_model.bin`).
"""
import json
import logging
import os
from typing import Dict, Iterable, List, Tuple

import torch
from fvcore.common.checkpoint import _filter_reused_missing_keys
from torch import nn

__all__ = [
    "load_state_dict_file",
    "load_t5_folder_state_dict",
    "split_prefixed",
    "load_into",
    "load_sam_checkpoint",
    "load_eva02_checkpoint",
]

logger = logging.getLogger(__name__)


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """A flat tensor dict from a `.safetensors` file or a torch file read with `weights_only=True` (a top-level
    "model" / "state_dict" entry is unwrapped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusing a non-tensor object, truncated file, ...
        raise ValueError(f"cannot read {path} as a tensor-only torch file (weights_only=True): {e}") from e
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return obj


def load_t5_folder_state_dict(folder: str) -> Dict[str, torch.Tensor]:
    """The full state dict of a local HF T5 folder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"T5 weights folder not found: {folder}")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = os.path.join(folder, index_name)
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(load_state_dict_file(os.path.join(folder, shard)))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return load_state_dict_file(path)
    raise FileNotFoundError(f"{folder}: no model.safetensors, pytorch_model.bin or shard index")


def split_prefixed(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Entries of `state` under `prefix.` with the prefix removed."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}


def load_into(module: nn.Module, state: Dict[str, torch.Tensor], what: str, ignore: Iterable[str] = ()) -> Tuple[List[str], List[str]]:
    """`module.load_state_dict(state, strict=False)` that raises on shape mismatches (naming the key) and logs
    missing / unexpected keys by name; a parameter shared under several names (tied embeddings) is not missing when
    one of its names was loaded. Returns (missing, unexpected)."""
    own = module.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(f"{what}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    result = module.load_state_dict(state, strict=False)
    missing = _filter_reused_missing_keys(module, result.missing_keys)
    missing = [k for k in missing if not any(k.startswith(i) for i in ignore)]
    if missing:
        logger.warning("%s: missing keys (left at init): %s", what, ", ".join(missing))
    if result.unexpected_keys:
        logger.warning("%s: unexpected keys (ignored): %s", what, ", ".join(result.unexpected_keys))
    return missing, list(result.unexpected_keys)


def load_sam_checkpoint(path: str, image_encoder=None, prompt_encoder=None, mask_decoder=None) -> None:
    """Load an official SAM checkpoint into the given segment_anything modules (any may be None). The image
    encoder's position tables are resized to its input size."""
    from .backbone.sam_vit import resize_sam_encoder_state_dict

    state = load_state_dict_file(path)
    if not any(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in state):
        raise ValueError(f"{path}: not a SAM checkpoint (no image_encoder.* / prompt_encoder.* / mask_decoder.* keys)")
    if image_encoder is not None:
        enc = resize_sam_encoder_state_dict(split_prefixed(state, "image_encoder"), image_encoder)
        load_into(image_encoder, enc, f"SAM image encoder ({path})")
    if prompt_encoder is not None:
        load_into(prompt_encoder, split_prefixed(state, "prompt_encoder"), f"SAM prompt encoder ({path})")
    if mask_decoder is not None:
        load_into(mask_decoder, split_prefixed(state, "mask_decoder"), f"SAM mask decoder ({path})")


def load_eva02_checkpoint(path: str, timm_model: nn.Module) -> None:
    """Load a timm EVA02 state dict into `timm_model` through timm's checkpoint filter (resizes the absolute
    position embedding and patch embedding to the model). The classifier head is ignored."""
    from timm.models.eva import checkpoint_filter_fn

    state = checkpoint_filter_fn(load_state_dict_file(path), timm_model)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    load_into(timm_model, state, f"EVA02 ({path})")
