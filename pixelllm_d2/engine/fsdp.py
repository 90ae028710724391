"""Fully sharded data parallel (torch FSDP2, `fully_shard`) for the paper-scale model, and full (unsharded)
state dicts so FSDP checkpoints hold the same model weights as single-process ones."""
import logging
import re

import torch
from torch import nn

from ..utils import comm

__all__ = ["is_fsdp", "shard_model", "full_model_state_dict", "load_full_model_state_dict", "FullOptimizerState"]

logger = logging.getLogger(__name__)


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module, device: torch.device, module_class_regex: str) -> nn.Module:
    """Apply `fully_shard` to every submodule whose class name fully matches `module_class_regex` (the
    transformer blocks: one all-gather per block), innermost first, then to the root, after broadcasting rank 0's
    weights. Parameters, gradients and optimizer states are sharded over all processes; frozen parameters stay
    frozen.

    Args:
        model: the model, on `device`, in a process group of every rank.
        device: the device type names the device mesh ("cuda" with NCCL, "cpu" with gloo).
        module_class_regex: e.g. SOLVER.FSDP_SHARD_MODULES.
    Returns:
        the same model object, sharded in place.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    comm.broadcast_module_state(model)
    mesh = init_device_mesh(device.type, (comm.get_world_size(),))
    pattern = re.compile(module_class_regex)
    targets = [(n, m) for n, m in model.named_modules() if n and pattern.fullmatch(type(m).__name__)]
    for _, m in reversed(targets):
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    logger.info(
        "FSDP: sharded %d submodules matching %r over %d processes", len(targets), module_class_regex, mesh.size()
    )
    return model


def _full_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state_dict(model: nn.Module) -> dict:
    """Collective: the unsharded state dict, on CPU, on rank 0 (empty on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def load_full_model_state_dict(model: nn.Module, state_dict: dict):
    """Load an unsharded state dict (every rank passes the full dict) into a sharded model; non-strict.

    Returns:
        torch's `_IncompatibleKeys` (missing_keys, unexpected_keys).
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    return set_model_state_dict(model, state_dict, options=_full_options(strict=False))


class FullOptimizerState:
    """A checkpointable view of an optimizer over an FSDP model: `state_dict()` is collective and returns the
    unsharded state keyed by parameter names (on rank 0); `load_state_dict` takes that form back, so a run can
    resume with a different number of processes."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=_full_options(cpu_offload=True))

    def load_state_dict(self, state_dict: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state_dict, options=_full_options())
