"""Training hooks (detectron2's `detectron2.engine.hooks`): iteration timing, LR scheduling, periodic
checkpoints, periodic evaluation and periodic metric writing."""
import datetime
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional

from fvcore.common.checkpoint import PeriodicCheckpointer as _FvPeriodicCheckpointer

from ..utils import comm
from ..utils.env import preserve_rng_state
from ..utils.events import EventWriter
from .checkpoint import Checkpointer
from .train_loop import HookBase

__all__ = [
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "EvalHook",
    "PeriodicWriter",
    "StopOnSignal",
    "TrainingInterrupted",
    "flatten_results_dict",
]

logger = logging.getLogger(__name__)


class IterationTimer(HookBase):
    """Records each step's wall time (data loading + forward + backward + the hooks registered before it) as the
    scalar `time`, and logs the overall speed at the end. Register it first."""

    def before_train(self) -> None:
        self._start = time.perf_counter()

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        self.trainer.storage.put_scalars(time=time.perf_counter() - self._step_start)

    def after_train(self) -> None:
        total = time.perf_counter() - self._start
        n = self.trainer.iter - self.trainer.start_iter
        if n > 0:
            logger.info(
                "Overall training speed: %d iterations in %s (%.4f s / it)",
                n,
                datetime.timedelta(seconds=int(total)),
                total / n,
            )


class LRScheduler(HookBase):
    """Steps the trainer's LR scheduler after each iteration and records `lr`: the current LR of the largest
    parameter group without an LR multiplier (the largest group if all have one)."""

    def before_train(self) -> None:
        groups = self.trainer.optimizer.param_groups
        plain = [i for i, g in enumerate(groups) if g.get("lr_mult", 1.0) == 1.0] or list(range(len(groups)))
        self._group = max(plain, key=lambda i: len(groups[i]["params"]))

    def after_step(self) -> None:
        lr = self.trainer.optimizer.param_groups[self._group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.trainer.scheduler.step()


class PeriodicCheckpointer(_FvPeriodicCheckpointer, HookBase):
    """Saves `model_{iter:07d}.pth` after every `period` iterations (period <= 0: none) and `model_final.pth`
    after the last one (fvcore's PeriodicCheckpointer), plus the model-only `model_final.safetensors` when
    `final_safetensors`; a run resumed from the checkpoint of its last iteration writes the final files at its
    end.
    Register it on every process (saves are collective) and after `LRScheduler`, so the saved scheduler state
    is that of the next iteration."""

    def __init__(
        self, checkpointer: Checkpointer, period: int, final_safetensors: bool = True, file_prefix: str = "model"
    ):
        period = period if period > 0 else sys.maxsize
        super().__init__(checkpointer, period, max_iter=None, max_to_keep=None, file_prefix=file_prefix)
        self.final_safetensors = final_safetensors

    def before_train(self) -> None:
        self.max_iter = self.trainer.max_iter
        self._final_saved = False

    def after_step(self) -> None:
        it = self.trainer.iter
        self.step(it)
        if it >= self.max_iter - 1:
            self._save_final_safetensors()
            self._final_saved = True

    def after_train(self) -> None:
        # A run resumed from the checkpoint of its last iteration (a kill during the final save) runs no step:
        # the final files are written here, holding the state after the last iteration as an uninterrupted run
        # saves it.
        if self.trainer.iter < self.max_iter or self._final_saved:
            return
        done = self.trainer.iter
        self.trainer.iter = self.max_iter - 1
        try:
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=self.max_iter - 1)
            self._save_final_safetensors()
        finally:
            self.trainer.iter = done
        self._final_saved = True

    def _save_final_safetensors(self) -> None:
        if self.final_safetensors:
            self.checkpointer.save_safetensors(f"{self.file_prefix}_final")


def flatten_results_dict(results: Mapping) -> Dict[str, float]:
    """{"a": {"b": 1.0}} -> {"a/b": 1.0}; entries that are not numbers (lists, strings) are left out."""
    out = {}
    for k, v in results.items():
        if isinstance(v, Mapping):
            out.update({f"{k}/{kk}": vv for kk, vv in flatten_results_dict(v).items()})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out


class EvalHook(HookBase):
    """Runs `eval_function()` after every `eval_period` iterations (0: never periodically) and after a completed
    run, and records its (nested) dict of metrics as scalars. The RNG streams are saved and restored around it,
    so evaluating does not change the training that follows (exact resume holds with any EVAL_PERIOD)."""

    def __init__(self, eval_period: int, eval_function: Callable[[], Optional[Mapping]]):
        self._period = eval_period
        self._func = eval_function

    def _do_eval(self) -> None:
        with preserve_rng_state():
            results = self._func()
        if results:
            flat = flatten_results_dict(results)
            for k, v in flat.items():
                if not math.isfinite(v):
                    logger.warning("Evaluation metric %s is %s", k, v)
            self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        # Only after a completed run: an exception (e.g. a NaN loss) stops without evaluating.
        if self.trainer.iter >= self.trainer.max_iter:
            self._do_eval()


class TrainingInterrupted(SystemExit):
    """Raised by `StopOnSignal` after the checkpoint is written; exits with 128 + the signal number (130 for
    Ctrl-C, 143 for SIGTERM), as a process killed by that signal would report."""


class StopOnSignal(HookBase):
    """On SIGINT (Ctrl-C) or SIGTERM (how SLURM and Kubernetes preempt jobs), finish the current iteration, write
    `model_{iter:07d}.pth` (atomically, with everything `--resume` restores), print the resume command and stop
    with `TrainingInterrupted`. A second Ctrl-C stops at once. With several processes the decision is shared
    (every rank stops after the same iteration). Register it after `PeriodicCheckpointer` and before `EvalHook`.

    Args:
        checkpointer: the trainer's `Checkpointer`.
        signals: the signals handled.
    """

    def __init__(self, checkpointer: Checkpointer, signals=(signal.SIGINT, signal.SIGTERM)):
        self.checkpointer = checkpointer
        self.signals = tuple(signals)
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.received = signum
        logger.warning("Received %s: stopping after iteration %d with a checkpoint (Ctrl-C again to stop at once)",
                       signal.Signals(signum).name, self.trainer.iter)

    def before_train(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)

    def after_train(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def after_step(self) -> None:
        received = self.received
        if comm.get_world_size() > 1:
            received = next((r for r in comm.all_gather(received) if r is not None), None)
        if received is None:
            return
        it = self.trainer.iter
        name = f"model_{it:07d}"
        self.checkpointer.save(name, iteration=it)
        if comm.is_main_process():
            argv = list(sys.argv)
            command = " ".join(["python", argv[0], "--resume"] + [a for a in argv[1:] if a != "--resume"])
            message = (f"Interrupted by {signal.Signals(received).name} after iteration {it}: checkpoint "
                       f"{os.path.join(self.checkpointer.save_dir, name)}.pth written. Resume with: {command}")
            logger.warning(message)
            print(message, file=sys.stderr, flush=True)
        raise TrainingInterrupted(128 + received)


class PeriodicWriter(HookBase):
    """Calls every writer's `write()` after every `period` iterations and after the last one; closes them at the
    end. Register it last (on the main process), so it sees every scalar of the step."""

    def __init__(self, writers: List[EventWriter], period: int = 20):
        self._writers = writers
        self._period = period

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self._period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            for w in self._writers:
                w.write()

    def after_train(self) -> None:
        for w in self._writers:
            w.write()
            w.close()
