"""Peak memory of this process, for logs and benchmarks."""
import resource
import sys
from typing import Tuple

import torch

__all__ = ["peak_memory_mib", "reset_peak_memory"]


def peak_memory_mib(device: torch.device) -> Tuple[str, float]:
    """Peak memory since the last `reset_peak_memory`.

    Returns:
        (kind, MiB): ("cuda_max_allocated", torch.cuda.max_memory_allocated) on a CUDA device, else
        ("rss_peak", the process's peak resident set size; not resettable, so since process start).
    """
    if device.type == "cuda":
        return "cuda_max_allocated", torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return "rss_peak", rss / (2**20 if sys.platform == "darwin" else 2**10)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
