"""The few process-group calls evaluation needs; each is a no-op in a single process."""
from typing import Any, List

import torch.distributed as dist

__all__ = ["get_rank", "get_world_size", "is_main_process", "all_gather", "synchronize"]


def get_world_size() -> int:
    """Number of processes of the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    """Rank of this process in the default group (0 when torch.distributed is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather(obj: Any) -> List[Any]:
    """Gather a picklable object from every process.

    Returns:
        list of `get_world_size()` objects, element i from rank i (`[obj]` in a single process).
    """
    world_size = get_world_size()
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def synchronize() -> None:
    """Barrier across all processes (nothing in a single process)."""
    if get_world_size() > 1:
        dist.barrier()
