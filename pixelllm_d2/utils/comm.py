"""Helpers for multi-process training over torch.distributed. Every function also works, trivially, in a single
process without an initialised process group."""
import itertools
import os
from typing import Any, List

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "get_world_size",
    "get_rank",
    "get_local_rank",
    "get_local_size",
    "is_main_process",
    "synchronize",
    "all_gather",
    "shared_random_seed",
    "broadcast_module_state",
]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if _initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if _initialized() else 0


def get_local_rank() -> int:
    """Rank of this process on its machine (`LOCAL_RANK`, set by `launch` and by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if _initialized() else 0


def get_local_size() -> int:
    """Processes on this machine (`LOCAL_WORLD_SIZE`, set by `launch` and by torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", get_world_size())) if _initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier over all processes; a no-op in a single process."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL:
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_gather(obj: Any) -> List[Any]:
    """Gather a picklable object from every process.

    Returns:
        list with one entry per rank, in rank order (`[obj]` in a single process).
    """
    world = get_world_size()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def shared_random_seed() -> int:
    """A random int in [0, 2**31) drawn on rank 0 and shared by every process (for data seeds that must agree
    across ranks when the config asks for a random seed)."""
    return all_gather(int(np.random.randint(2**31)))[0]


def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Copy the parameters and buffers of rank `src` to every process, in place. Processes seed differently
    (SEED + rank), and DDP with broadcast_buffers=False syncs parameters only: random buffers (e.g. SAM's
    Fourier position-encoding matrix) would otherwise differ between processes."""
    if get_world_size() == 1:
        return
    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            dist.broadcast(t, src=src)
