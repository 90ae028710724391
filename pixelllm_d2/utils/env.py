"""Process environment: seeding, RNG state capture / restore (for exact resume), determinism, environment info."""
import contextlib
import importlib.metadata
import logging
import os
import random
import sys
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

__all__ = [
    "seed_all_rng",
    "get_rng_state",
    "set_rng_state",
    "preserve_rng_state",
    "set_deterministic",
    "collect_env_info",
]

logger = logging.getLogger(__name__)


def seed_all_rng(seed: Optional[int] = None) -> int:
    """Seed Python's `random`, NumPy and torch (CPU and every CUDA device).

    Args:
        seed: the seed; None draws a random one from the OS (and logs it).
    Returns:
        the seed used.
    """
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        logger.info("Using a random seed: %d", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def get_rng_state() -> Dict[str, Any]:
    """The RNG states of this process as tensors and primitives only, so a checkpoint holding them loads with
    `torch.load(weights_only=True)`.

    Returns:
        dict with `python` (the tuple of `random.getstate()`), `numpy` (MT19937 key as int64 tensor, pos,
        has_gauss, cached_gaussian), `torch` (uint8 tensor) and `cuda` (uint8 tensor of this process's current
        device; None when CUDA is not in use). Other devices are left alone: querying them would create a CUDA
        context on every visible GPU in every process.
    """
    _, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the states returned by `get_rng_state` (the CUDA one on this process's current device)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        else:
            logger.warning("The saved RNG states include CUDA's, but CUDA is not available: CUDA RNG not restored")


@contextlib.contextmanager
def preserve_rng_state() -> Iterator[None]:
    """Run a block (e.g. a periodic evaluation) without changing the RNG streams the training loop sees."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def set_deterministic(deterministic: bool, cudnn_benchmark: bool = False) -> None:
    """Switch torch to deterministic kernels (`torch.use_deterministic_algorithms`) or not.

    Deterministic CUDA matmuls need `CUBLAS_WORKSPACE_CONFIG`, which must be set before CUDA initialises; it is
    set here when absent.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic


def collect_env_info() -> str:
    """A table of the versions and devices that matter for reproducing a run."""
    from tabulate import tabulate

    import pixelllm_d2

    rows = [("sys.platform", sys.platform), ("Python", sys.version.replace("\n", " "))]
    rows.append(("pixelllm_d2", f"{pixelllm_d2.__version__} @ {os.path.dirname(pixelllm_d2.__file__)}"))
    rows.append(("torch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"))
    # Versions from package metadata: importing transformers / peft just to log them takes seconds.
    for name in ("numpy", "torchvision", "timm", "transformers", "peft", "safetensors", "fvcore", "iopath"):
        try:
            rows.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    rows.append(("CUDA available", torch.cuda.is_available()))
    if torch.cuda.is_available():
        rows.append(("CUDA / cuDNN", f"{torch.version.cuda} / {torch.backends.cudnn.version()}"))
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
    rows.append(("CPU threads", torch.get_num_threads()))
    return tabulate(rows)
