"""Model FLOPs (torch.utils.flop_counter) and the machine's measured matmul peak, for FLOP-utilisation figures."""
import time
from typing import Any, Callable, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_flops", "matmul_peak_flops"]


_REGISTERED = False


def _register_cpu_attention() -> None:
    # torch's counter knows the CUDA attention kernels but not the CPU flash kernel that SDPA runs on CPU: count it
    # with torch's own SDPA formulas (4 * B * H * Lq * Lk * D forward, 2.5x that backward).
    global _REGISTERED
    if _REGISTERED:
        return
    from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return sdpa_flop_count(query.shape, key.shape, value.shape)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)

    _REGISTERED = True


class _FlopCounter(TorchDispatchMode):
    # torch's FlopCounterMode without its per-module tracker (whose backward hooks fail on inputs that require grad
    # inside no_grad regions, as the frozen SAM parts see): the same per-operator formulas, one total.
    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], Any]) -> Tuple[Any, int]:
    """Run `fn()` once, counting the FLOPs of its matmuls, convolutions and attention (forward and backward) with
    torch.utils.flop_counter's formulas.

    Returns:
        (fn's result, total FLOPs).
    """
    _register_cpu_attention()
    counter = _FlopCounter()
    with counter:
        out = fn()
    return out, counter.total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, sizes: Sequence[int] = (512, 1024, 2048, 4096),
                      repeats: int = 3, max_seconds: float = 0.5) -> float:
    """The best FLOP/s of square `dtype` matmuls on `device`: the peak that MFU figures are relative to, measured
    rather than taken from a data sheet. Sizes are tried in increasing order, each warmed up once then timed
    `repeats` times; a size whose warm-up takes over `max_seconds` ends the search (a dtype without a hardware path,
    such as bf16 on AVX2-only CPUs, is slow enough to make the larger sizes take many minutes).
    """
    best = 0.0
    g = torch.Generator(device="cpu").manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        warm = time.perf_counter() - start
        best = max(best, 2.0 * n**3 / warm)
        if warm > max_seconds:
            break
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            best = max(best, 2.0 * n**3 / (time.perf_counter() - start))
    return best
