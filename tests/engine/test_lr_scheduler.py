import math

import pytest
import torch

from pixelllm_d2.config import get_cfg
from pixelllm_d2.engine import build_lr_scheduler


def _official(i, base_lr, warmup, total):
    """scenic `constant * cosine_decay * linear_warmup` with steps_per_cycle = total steps."""
    warm = min(1.0, i / warmup) if warmup > 0 else 1.0
    progress = max(0.0, i - warmup) / (total - warmup)
    return base_lr * warm * 0.5 * (1 + math.cos(math.pi * progress))


def _cfg(name="WarmupCosineLR", max_iter=100, warmup=10, factor=0.0, base_lr=0.5):
    cfg = get_cfg()
    cfg.SOLVER.LR_SCHEDULER_NAME = name
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.WARMUP_ITERS = warmup
    cfg.SOLVER.WARMUP_FACTOR = factor
    cfg.SOLVER.BASE_LR = base_lr
    return cfg


def _optimizer(base_lr, mults=(1.0,)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": base_lr * m} for m in mults]
    return torch.optim.AdamW(groups, lr=base_lr)


def _lrs(sched, opt, n):
    """The lr of each group used at iterations 0..n-1 (the LRScheduler hook steps after each iteration)."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()  # no gradients: a no-op, in the trainer's order
        sched.step()
    return out


@pytest.mark.parametrize("max_iter,warmup", [(100, 10), (40000, 1000), (57, 0)])
def test_warmup_cosine_matches_official_schedule(max_iter, warmup):
    cfg = _cfg(max_iter=max_iter, warmup=warmup)
    opt = _optimizer(0.5)
    lrs = _lrs(build_lr_scheduler(cfg, opt), opt, max_iter)
    for i in sorted({0, 1, warmup // 2, warmup, warmup + 1, (max_iter + warmup) // 2, max_iter - 1}):
        assert lrs[i][0] == pytest.approx(_official(i, 0.5, warmup, max_iter), rel=1e-9, abs=1e-12), i


def test_values_at_given_iterations():
    cfg = _cfg(max_iter=100, warmup=10, base_lr=1.0)
    opt = _optimizer(1.0, mults=(1.0, 0.25))
    lrs = _lrs(build_lr_scheduler(cfg, opt), opt, 100)
    assert lrs[0] == [0.0, 0.0]
    assert lrs[5] == pytest.approx([0.5, 0.125])
    assert lrs[10] == pytest.approx([1.0, 0.25])
    assert lrs[55] == pytest.approx([0.5, 0.125])  # half-way through the cosine
    assert lrs[99][0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_warmup_factor_and_constant():
    cfg = _cfg(name="WarmupConstantLR", max_iter=20, warmup=4, factor=0.1, base_lr=2.0)
    opt = _optimizer(2.0)
    lrs = [v[0] for v in _lrs(build_lr_scheduler(cfg, opt), opt, 20)]
    assert lrs[:5] == pytest.approx([0.2, 0.65, 1.1, 1.55, 2.0])
    assert lrs[4:] == pytest.approx([2.0] * 16)


def test_state_dict_round_trip_continues_the_schedule():
    cfg = _cfg(max_iter=30, warmup=5)
    opt = _optimizer(0.5)
    sched = build_lr_scheduler(cfg, opt)
    _lrs(sched, opt, 12)
    state, opt_state = sched.state_dict(), opt.state_dict()
    assert state == {"base_lrs": [0.5], "last_epoch": 12}
    rest = _lrs(sched, opt, 18)

    # A resumed run restores the optimizer (its groups' current lr) and the scheduler.
    opt2 = _optimizer(0.5)
    sched2 = build_lr_scheduler(cfg, opt2)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(state)
    assert _lrs(sched2, opt2, 18) == rest


def test_warmup_longer_than_run_is_a_linear_ramp():
    cfg = _cfg(max_iter=10, warmup=1000)
    opt = _optimizer(1.0)
    lrs = [v[0] for v in _lrs(build_lr_scheduler(cfg, opt), opt, 10)]
    assert lrs == pytest.approx([i / 10 for i in range(10)])


def test_unknown_scheduler_name():
    with pytest.raises(ValueError, match="WarmupMultiStepLR"):
        build_lr_scheduler(_cfg(name="WarmupMultiStepLR"), _optimizer(1.0))
