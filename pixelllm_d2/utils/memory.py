"""Peak memory of this process, for logs and benchmarks."""
import os
import resource
import sys
from typing import Tuple

import torch

__all__ = ["peak_memory_mib", "reset_peak_memory"]

_STATUS, _CLEAR_REFS = "/proc/self/status", "/proc/self/clear_refs"


def _vm_hwm_mib() -> float:
    # Linux: the resident-set high-water mark, which `reset_peak_memory` can reset (ru_maxrss cannot be)
    with open(_STATUS) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    raise OSError("no VmHWM in /proc/self/status")


def peak_memory_mib(device: torch.device) -> Tuple[str, float]:
    """Peak memory since the last `reset_peak_memory`.

    Returns:
        (kind, MiB): ("cuda_max_allocated", torch.cuda.max_memory_allocated) on a CUDA device, else
        ("rss_peak", the process's peak resident set size: since the last reset on Linux, since process start
        elsewhere).
    """
    if device.type == "cuda":
        return "cuda_max_allocated", torch.cuda.max_memory_allocated(device) / 2**20
    try:
        return "rss_peak", _vm_hwm_mib()
    except OSError:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return "rss_peak", rss / (2**20 if sys.platform == "darwin" else 2**10)


def reset_peak_memory(device: torch.device) -> None:
    """Restart the peak: CUDA's allocator statistics, or on Linux the process's resident-set high-water mark
    (writing 5 to /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists(_CLEAR_REFS):
        try:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")
        except OSError:  # not permitted in some sandboxes: the peak then counts from process start
            pass
