"""Reduced precision for the paper-scale model: frozen weights held in bf16, and inference under autocast.

Frozen weights (SAM, the base T5, the prompt encoder, the mask decoder) get no gradient and no optimizer state, so
holding them in bf16 loses nothing that training keeps in float32; it halves the largest share of the model's memory
(paper scale: 3.36B frozen parameters, 12.5 GiB in float32). The frozen `nn.Linear` weights (all but ~3% of them) are
cast; embeddings, norms, position tables and convolutions stay float32. The model then runs
either way:
- under bf16 autocast (GPUs, CPUs with bf16 matmul units): the matmuls run in bf16 anyway;
- in float32 (CPUs without bf16 units, where a bf16 matmul is ~100x slower than a float32 one): each frozen layer
  upcasts its weight for the one matmul that needs it and keeps only the bf16 weight for the backward pass
  (`_UpcastLinear`), so float32 compute costs no float32 copy of the frozen weights. One rounding remains:
  transformers' T5 casts its FFN activations to the weight dtype before the output projection.
"""
import contextlib
import functools
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.nested import map_leaves

__all__ = ["DTYPES", "parse_dtype", "cast_frozen", "check_frozen_dtype", "autocast_in_eval", "eval_autocast", "to_float32",
           "FrozenLowPrecisionLinear"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str, key: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"{key} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def check_frozen_dtype(cfg) -> Optional[torch.dtype]:
    """cfg.MODEL.PIXELLLM.FROZEN_DTYPE as a dtype (None for float32)."""
    dtype = parse_dtype(cfg.MODEL.PIXELLLM.FROZEN_DTYPE, "MODEL.PIXELLLM.FROZEN_DTYPE")
    return None if dtype == torch.float32 else dtype


class _UpcastLinear(torch.autograd.Function):
    # y = x W^T + b with a frozen low-precision W used in x's dtype; only W itself (no upcast copy) is kept for the
    # backward pass, which needs it for x's gradient alone.
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return (grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None), None, None


class FrozenLowPrecisionLinear(nn.Linear):
    """`nn.Linear` with a frozen low-precision weight: under autocast as any Linear; outside autocast in float32
    (a low-precision input is upcast too: transformers' T5 casts its FFN activations to the weight dtype before
    `wo`, and a bf16 matmul has no fast path on CPUs without bf16 units)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.requires_grad or w.dtype == torch.float32 or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        return _UpcastLinear.apply(x.float(), w, self.bias)


def cast_frozen(model: nn.Module, dtype: Optional[torch.dtype]) -> int:
    """Hold the frozen (requires_grad=False) weights and biases of every `nn.Linear` of `model` in `dtype`, in
    place (no-op for None); those modules then run in float32 or under autocast alike. Embedding tables stay float32:
    libraries read them as raw parameters (SAM's prompt embeddings), and the large ones (T5: 66M) are few.

    Returns:
        the number of elements cast.
    """
    if dtype is None:
        return 0
    n = 0
    for m in model.modules():
        if type(m) not in (nn.Linear, FrozenLowPrecisionLinear) or m.weight.requires_grad:
            continue
        m.__class__ = FrozenLowPrecisionLinear
        for p in (m.weight, getattr(m, "bias", None)):
            if p is not None and not p.requires_grad and p.dtype != dtype:  # a shared weight: cast at its first module
                p.data = p.data.to(dtype)
                n += p.numel()
    return n


def _float32(x: Any) -> Any:
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32 else x


def to_float32(obj: Any) -> Any:
    """`obj` with every reduced-precision floating tensor inside dicts / lists / tuples cast to float32."""
    return map_leaves(obj, _float32)


def _eval_dtype(model: nn.Module) -> Optional[torch.dtype]:
    # the autocast dtype `model`'s inference adds (TEST.AMP), or None: not configured, or autocast already active
    dtype = model.test_amp_dtype
    return None if dtype is None or torch.is_autocast_enabled(model.device.type) else dtype


def eval_autocast(model: nn.Module):
    """The autocast `model`'s inference runs under (`model.test_amp_dtype` on its device), as a context manager;
    a null context when there is none to add."""
    dtype = _eval_dtype(model)
    return contextlib.nullcontext() if dtype is None else torch.autocast(model.device.type, dtype=dtype)


def autocast_in_eval(fn):
    """Decorator for a model method: in eval mode with `self.test_amp_dtype` set, run it under autocast on the
    model's device and return its outputs in float32. Training, or an autocast already active, run it as is."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if self.training or _eval_dtype(self) is None:
            return fn(self, *args, **kwargs)
        with eval_autocast(self):
            out = fn(self, *args, **kwargs)
        return to_float32(out)

    return wrapper
