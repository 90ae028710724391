"""Checkpointing: fvcore's `Checkpointer` conventions (`save(name)` -> `save_dir/name.pth`, `last_checkpoint`
names the newest file, `resume_or_load`), with

- atomic writes: temporary file + fsync + `os.replace`, for the checkpoint and then for `last_checkpoint`, so a
  kill at any moment leaves the previous checkpoint loadable and `last_checkpoint` naming a complete file;
- collective saves: every process calls `save` (FSDP gathers shards, the trainer gathers RNG states), rank 0
  writes;
- safe loading: `.safetensors`, or torch files with `torch.load(weights_only=True)` (a full training checkpoint
  `{"model": ..., ...}` or a bare state dict); weights that are mis-shaped, non-finite or leave most of the model
  unloaded are refused (`modeling.weights.verify_state_dict`, the rule of every loader); other missing /
  unexpected keys are logged by name;
- model-only safetensors export (`save_safetensors`), shared tensors stored once;
- optimizer states keyed by parameter name (`NamedOptimizerState`), the same with and without FSDP.
"""
import glob
import json
import logging
import os
from typing import Any, Dict, List, Optional

import torch
from fvcore.common.checkpoint import Checkpointer as _FvCheckpointer
from fvcore.common.checkpoint import (
    _filter_reused_missing_keys,
    _IncompatibleKeys,
    _strip_prefix_if_present,
    get_missing_parameters_message,
    get_unexpected_parameters_message,
)

from ..modeling.weights import read_safetensors_file, read_torch_file, verify_state_dict

from ..utils import comm
from ..utils.file_io import TMP_SUFFIX, atomic_path, atomic_write
from . import fsdp

__all__ = ["Checkpointer", "NamedOptimizerState", "load_safetensors", "save_safetensors"]

# safetensors metadata key: {"alias name": "stored name"} of tensors that share storage (e.g. tied embeddings).
_ALIASES_KEY = "pixelllm_d2.aliases"


def save_safetensors(state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Write a state dict as safetensors, atomically. A tensor that is exactly another one's storage view is
    stored once and recorded as an alias; other storage overlaps are copied (safetensors refuses shared memory).
    """
    tensors, aliases, views = {}, {}, {}
    storages = set()
    for k, v in state_dict.items():
        v = v.detach()
        storage = (v.device, v.untyped_storage().data_ptr()) if v.numel() else None
        view = (storage, v.storage_offset(), tuple(v.shape), v.stride(), v.dtype)
        if storage is not None and view in views:
            aliases[k] = views[view]
            continue
        if storage is not None:
            views[view] = k
        tensors[k] = v.clone() if storage in storages else v
        storages.add(storage)
    tensors = {k: v.cpu().contiguous() for k, v in tensors.items()}
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", _ALIASES_KEY: json.dumps(aliases)})


def load_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU, restoring aliases written by `save_safetensors`."""
    from safetensors import safe_open

    state = read_safetensors_file(path)
    with safe_open(path, framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get(_ALIASES_KEY, "{}"))
    for alias, stored in aliases.items():
        state[alias] = state[stored]
    return state


class NamedOptimizerState:
    """A checkpointable view of an optimizer whose state is keyed by parameter names instead of positions: the
    form FSDP's full optimizer state dicts have (`fsdp.FullOptimizerState`), so a checkpoint resumes with or
    without FSDP and with any number of processes.

    Args:
        model: the model the optimizer's parameters belong to (a DDP wrapper is unwrapped).
        optimizer: the optimizer.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        self.optimizer = optimizer

    def _group_names(self):
        by_id = {id(p): n for n, p in self.model.named_parameters()}
        return [[by_id[id(p)] for p in g["params"]] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        sd = self.optimizer.state_dict()
        name_of, groups = {}, []
        for group, names in zip(sd["param_groups"], self._group_names()):
            name_of.update(zip(group["params"], names))
            groups.append({**group, "params": names})
        return {"state": {name_of[i]: v for i, v in sd["state"].items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        current = self._group_names()
        saved = [g["params"] for g in state_dict["param_groups"]]
        if saved != current:
            only = sorted({n for g in saved for n in g} ^ {n for g in current for n in g})
            raise ValueError(
                "The optimizer in the checkpoint has other parameter groups than this run's: the trainable "
                "parameters or the optimizer config (LR multipliers, weight decay kinds) changed. Group sizes "
                f"saved {[len(g) for g in saved]} vs now {[len(g) for g in current]}; parameters in only one of "
                f"them: {only[:5]}"
            )
        index = {n: i for i, n in enumerate(n for names in current for n in names)}
        self.optimizer.load_state_dict(
            {
                "state": {index[n]: v for n, v in state_dict["state"].items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state_dict["param_groups"]],
            }
        )


class Checkpointer(_FvCheckpointer):
    """fvcore's Checkpointer made atomic, collective and safe (see the module docstring).

    Args:
        model: the model (DDP wrappers are unwrapped; FSDP models are saved and loaded unsharded).
        save_dir: where checkpoints and `last_checkpoint` are written.
        save_to_disk: default: only on the main process.
        checkpointables: other objects with `state_dict` / `load_state_dict` (optimizer, scheduler, trainer);
            their states must hold tensors and primitives only.
    """

    def __init__(
        self, model: torch.nn.Module, save_dir: str = "", *, save_to_disk: Optional[bool] = None, **checkpointables
    ):
        if save_to_disk is None:
            save_to_disk = comm.is_main_process()
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.logger = logging.getLogger(__name__)
        self._loading = ""

    def model_state_dict(self) -> Dict[str, torch.Tensor]:
        """Collective under FSDP: the full model state dict (on rank 0)."""
        return fsdp.full_model_state_dict(self.model) if fsdp.is_fsdp(self.model) else self.model.state_dict()

    def save(self, name: str, **kwargs: Any) -> None:
        """Collective: every process calls it; the main process writes `save_dir/{name}.pth` atomically and then
        points `last_checkpoint` at it.

        Args:
            name: file name without extension.
            kwargs: extra entries of the checkpoint (tensors and primitives).
        """
        if not self.save_dir:
            return
        data = {"model": self.model_state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        if not self.save_to_disk:
            return
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        os.makedirs(self.save_dir, exist_ok=True)
        with atomic_write(path) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def save_safetensors(self, name: str) -> Optional[str]:
        """Collective: write the model weights alone to `save_dir/{name}.safetensors` (main process).

        Returns:
            the path written, or None on processes that do not write.
        """
        state = self.model_state_dict()
        if not (self.save_dir and self.save_to_disk):
            return None
        path = os.path.join(self.save_dir, f"{name}.safetensors")
        self.logger.info("Saving model weights to %s", path)
        save_safetensors(state, path)
        return path

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """fvcore's: with `resume` and a `last_checkpoint`, load it with every checkpointable; else load the
        model weights of `path` (if any). Temporary files of writes killed earlier are removed first."""
        if resume and self.save_to_disk and self.save_dir:
            for stale in glob.glob(os.path.join(self.save_dir, f".*{TMP_SUFFIX}")):
                self.logger.info("Removing %s, left by an interrupted write", stale)
                os.remove(stale)
        return super().resume_or_load(path, resume=resume)

    def _load_file(self, f: str) -> Dict[str, Any]:
        self._loading = f
        if f.endswith(".safetensors"):
            return {"model": load_safetensors(f)}
        ckpt = read_torch_file(f)
        if not isinstance(ckpt, dict):
            raise ValueError(f"{f}: expected a dict (a checkpoint or a state dict), got {type(ckpt).__name__}")
        if "model" not in ckpt:
            bad = [k for k, v in ckpt.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise ValueError(
                    f"{f}: neither a checkpoint with a 'model' entry nor a state dict (non-tensor keys {bad[:5]})"
                )
            ckpt = {"model": ckpt}
        return ckpt

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """fvcore's `load`, with a missing file reported as `FileNotFoundError` naming it."""
        if path and not os.path.isfile(path):
            local = self.path_manager.get_local_path(path)
            if not os.path.isfile(local):
                raise FileNotFoundError(f"checkpoint not found: {path}")
            path = local
        return super().load(path, checkpointables)

    def _load_model(self, checkpoint: Any) -> _IncompatibleKeys:
        # The weights are checked with the rule every loader shares (`verify_state_dict`: refused when mis-shaped,
        # non-finite, or leaving most of the model unloaded) before anything is loaded.
        state = checkpoint.pop("model")
        _strip_prefix_if_present(state, "module.")  # saved from a DistributedDataParallel wrapper
        verify_state_dict(self.model, state, self._loading)
        if fsdp.is_fsdp(self.model):
            result = fsdp.load_full_model_state_dict(self.model, state)
        else:
            result = self.model.load_state_dict(state, strict=False)
        return _IncompatibleKeys(result.missing_keys, result.unexpected_keys, [])

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        # fvcore's messages (keys grouped by module), each naming the file it concerns.
        for k, shape_ckpt, shape_model in incompatible.incorrect_shapes:
            self.logger.warning(
                "%s: '%s' not loaded: shape %s in the checkpoint, %s in the model",
                self._loading,
                k,
                shape_ckpt,
                shape_model,
            )
        missing = _filter_reused_missing_keys(self.model, incompatible.missing_keys)
        if missing:
            self.logger.warning("%s: %s", self._loading, get_missing_parameters_message(missing))
        if incompatible.unexpected_keys:
            unexpected = get_unexpected_parameters_message(incompatible.unexpected_keys)
            self.logger.warning("%s: %s", self._loading, unexpected)
