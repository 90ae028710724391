"""Learning-rate schedules: fvcore param schedulers applied per iteration.

The official schedule (scenic `constant * cosine_decay * linear_warmup`, steps_per_cycle = total steps) is, for
iteration i of T with W warmup iterations:
    lr(i) = BASE_LR * min(1, i / W) * 0.5 * (1 + cos(pi * max(0, i - W) / (T - W)))
i.e. a linear warmup from 0 then a cosine to 0 over the remaining iterations. `WarmupCosineLR` reproduces it
(with the warmup starting at WARMUP_FACTOR instead of 0 when that is set).
"""
import logging
from typing import List

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)

__all__ = ["LRMultiplier", "build_lr_schedule", "build_lr_scheduler"]

logger = logging.getLogger(__name__)


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Sets the lr of every param group to `its initial lr * multiplier(iteration / max_iter)`; `step()` once per
    iteration. Its state is `base_lrs` and `last_epoch` only (primitives), so checkpoints stay weights_only-safe.

    Args:
        optimizer: the optimizer; each group's initial `lr` already includes its multipliers.
        multiplier: fvcore ParamScheduler over [0, 1].
        max_iter: iterations of the whole run.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: ParamScheduler, max_iter: int, last_iter=-1):
        if max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def get_lr(self) -> List[float]:
        m = self._multiplier(min(self.last_epoch / self._max_iter, 1.0))
        return [base_lr * m for base_lr in self.base_lrs]

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}


def build_lr_schedule(cfg) -> ParamScheduler:
    """The LR multiplier over training progress [0, 1] named by cfg.SOLVER.LR_SCHEDULER_NAME:
    "WarmupCosineLR" (linear warmup from WARMUP_FACTOR to 1 over WARMUP_ITERS, then cosine to 0) or
    "WarmupConstantLR" (the same warmup, then 1)."""
    s = cfg.SOLVER
    name = s.LR_SCHEDULER_NAME
    if name == "WarmupCosineLR":
        main = CosineParamScheduler(1.0, 0.0)
    elif name == "WarmupConstantLR":
        # fvcore's ConstantParamScheduler rejects where == 1.0, which the step after the last iteration reaches.
        main = LinearParamScheduler(1.0, 1.0)
    else:
        raise ValueError(f"Unknown SOLVER.LR_SCHEDULER_NAME {name!r}; use WarmupCosineLR or WarmupConstantLR")
    warmup = LinearParamScheduler(s.WARMUP_FACTOR, 1.0)
    if s.WARMUP_ITERS <= 0:
        return main
    if s.WARMUP_ITERS >= s.MAX_ITER:
        logger.warning(
            "SOLVER.WARMUP_ITERS=%d >= SOLVER.MAX_ITER=%d: the whole run is a linear warmup", s.WARMUP_ITERS, s.MAX_ITER
        )
        return warmup
    frac = s.WARMUP_ITERS / s.MAX_ITER
    return CompositeParamScheduler([warmup, main], lengths=[frac, 1.0 - frac], interval_scaling=["rescaled"] * 2)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """`LRMultiplier` over cfg.SOLVER.MAX_ITER iterations with `build_lr_schedule(cfg)`."""
    return LRMultiplier(optimizer, build_lr_schedule(cfg), cfg.SOLVER.MAX_ITER)
