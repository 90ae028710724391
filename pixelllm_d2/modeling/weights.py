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
import math
import os
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from fvcore.common.checkpoint import _filter_reused_missing_keys
from torch import nn

__all__ = [
    "CheckpointMismatchError",
    "MIN_LOADED_FRACTION",
    "verify_state_dict",
    "load_state_dict_file",
    "read_torch_file",
    "read_safetensors_file",
    "load_hf_folder_state_dict",
    "split_prefixed",
    "load_into",
    "load_sam_checkpoint",
    "load_eva02_checkpoint",
]

logger = logging.getLogger(__name__)


# A checkpoint must supply at least this fraction of a model's weights (by element count) to be loaded at all.
MIN_LOADED_FRACTION = 0.5


class CheckpointMismatchError(ValueError):
    """A weights file that does not fit the model it is loaded into (see `verify_state_dict`)."""


def _keys_text(keys: List[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _prefix_hint(missing: List[str], unexpected: List[str]) -> str:
    """' (its keys carry an extra prefix "x.")' when stripping one leading component of the unexpected keys gives
    the missing ones."""
    if not unexpected:
        return ""
    heads = {k.split(".", 1)[0] for k in unexpected if "." in k}
    stripped = {k.split(".", 1)[1] for k in unexpected if "." in k}
    if len(heads) == 1 and stripped & set(missing):
        return f' (its keys carry an extra prefix "{heads.pop()}.")'
    return ""


def verify_state_dict(
    model: nn.Module, state: Dict[str, torch.Tensor], source: str, shapes: Optional[Dict[str, Tuple[int, ...]]] = None
) -> Tuple[List[str], List[str]]:
    """The one rule every loader of model weights applies (the trainer, `--eval-only`, the predictor and demo,
    component checkpoints). A weights file is refused, before anything is loaded, when

    - a tensor it shares with the model has another shape (it was made for another architecture or vocabulary);
    - a tensor holds NaN or Inf;
    - it supplies less than MIN_LOADED_FRACTION of the model's weights by element count (a file of another
      model, or keys under another prefix): using it would run a mostly random model.

    Otherwise missing / unexpected keys are returned for the caller to log (fine-tuning from an earlier stage
    leaves new heads at their initialisation). A parameter shared under several names (tied embeddings) counts as
    loaded when one of its names is.

    Args:
        model: the module the weights are for.
        state: name -> tensor, as read from the file.
        source: how errors name the file (e.g. "MODEL.WEIGHTS (out/model_final.pth)").
        shapes: the model's full tensor shapes when `model.state_dict()` does not give them (FSDP shards).

    Returns:
        (missing keys, unexpected keys).

    Raises:
        CheckpointMismatchError: naming the file and the first offending keys.
    """
    if shapes is None:
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad_shape = [
        f"{k} {tuple(v.shape)} (model: {shapes[k]})" for k, v in state.items() if k in shapes and tuple(v.shape) != shapes[k]
    ]
    if bad_shape:
        raise CheckpointMismatchError(
            f"{source}: {len(bad_shape)} tensor(s) have another shape than in the model, so the file was made for "
            f"another configuration: {_keys_text(bad_shape)}"
        )
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise CheckpointMismatchError(f"{source}: NaN or Inf values in {len(non_finite)} tensor(s): {_keys_text(non_finite)}")
    missing = [k for k in shapes if k not in state]
    if missing:
        kept = set(_filter_reused_missing_keys(model, missing))  # fvcore returns set order; keep the model's
        missing = [k for k in missing if k in kept]
    unexpected = [k for k in state if k not in shapes]
    total = sum(math.prod(s) for s in shapes.values())
    unloaded = sum(math.prod(shapes[k]) for k in missing)
    if total and (total - unloaded) < MIN_LOADED_FRACTION * total:
        raise CheckpointMismatchError(
            f"{source}: supplies only {100.0 * (total - unloaded) / total:.1f}% of the model's weights, so it is not a "
            f"checkpoint of this model{_prefix_hint(missing, unexpected)}. Missing: {_keys_text(missing)}. "
            f"Unexpected: {_keys_text(unexpected) or 'none'}"
        )
    return missing, unexpected


def _first_line(e: BaseException) -> str:
    # torch's messages go on for lines and end with advice to retry with weights_only=False: wrong for a corrupt
    # file and unsafe for an untrusted one, so only their first line is kept
    lines = [x.strip() for x in str(e).splitlines() if x.strip() and "weights_only" not in x]
    return lines[0] if lines else type(e).__name__


def read_torch_file(path: str):
    """`torch.load(path, weights_only=True)` on the CPU, its failures as one-line `ValueError`s naming the file:
    a file holding pickled objects besides tensors (never unpickled here), or one that is truncated or not a torch
    file at all."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # a pickled class or function (allowed or blocked): an object, not garbage
            raise ValueError(
                f"{path}: holds pickled Python objects besides tensors, which are never unpickled here "
                f"(torch.load weights_only=True). Re-save its state dict as .safetensors or a plain tensor dict."
            ) from e
        raise ValueError(f"{path}: not a readable torch checkpoint (truncated or not a torch file): {_first_line(e)}") from e
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, IndexError, KeyError) as e:
        raise ValueError(f"{path}: not a readable torch checkpoint (truncated or not a torch file): {_first_line(e)}") from e


def read_safetensors_file(path: str) -> Dict[str, torch.Tensor]:
    """safetensors' `load_file` on the CPU, a damaged file reported as a one-line `ValueError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .safetensors file (truncated or another format): {_first_line(e)}") from e


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """A flat tensor dict from a `.safetensors` file or a torch file read with `weights_only=True` (a top-level
    "model" / "state_dict" entry is unwrapped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        return read_safetensors_file(path)
    obj = read_torch_file(path)
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return obj


def load_hf_folder_state_dict(folder: str) -> Dict[str, torch.Tensor]:
    """The full state dict of a local HF model folder (T5, BERT): sharded or single safetensors / .bin."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"HF weights folder not found: {folder}")
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
    """Check `state` with `verify_state_dict` (raises `CheckpointMismatchError`), then
    `module.load_state_dict(state, strict=False)`, logging missing (except those under the `ignore` prefixes) and
    unexpected keys by name. Returns (missing, unexpected)."""
    missing, unexpected = verify_state_dict(module, state, what)
    module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not any(k.startswith(i) for i in ignore)]
    if missing:
        logger.warning("%s: missing keys (left at init): %s", what, ", ".join(missing))
    if unexpected:
        logger.warning("%s: unexpected keys (ignored): %s", what, ", ".join(unexpected))
    return missing, unexpected


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
