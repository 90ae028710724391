"""The iteration-based training loop with hooks (detectron2's `TrainerBase` / `SimpleTrainer` / `AMPTrainer`).

A step: fetch a batch, forward (a dict of scalar losses), gather the losses of every process and stop on a
non-finite one, backward, optional gradient clipping, optimizer step. Hooks run before/after training and each
step.
"""
import logging
import math
import time
import weakref
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional

import torch

from ..utils import comm
from ..utils.events import EventStorage, get_event_storage

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "AMPTrainer", "NonFiniteLossError"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; raised before the backward pass, so the broken state is never stepped into
    the weights nor saved."""


class HookBase:
    """Called by the trainer around training and each step. `self.trainer` is set by `register_hooks` (a weak
    proxy). A hook with state to keep across a resume returns it from `state_dict` (tensors and primitives)."""

    trainer: "TrainerBase" = None

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TrainerBase:
    """Runs `run_step` for iterations [start_iter, max_iter) with hooks, inside an `EventStorage`.

    Attributes:
        iter: the current iteration; after a completed run, `max_iter`.
        start_iter, max_iter: the iteration range of this run.
        storage: the `EventStorage` of the run.
    """

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: Optional[EventStorage] = None
        self._pending_storage_state: Optional[dict] = None

    def register_hooks(self, hooks: Iterable[Optional[HookBase]]) -> None:
        """Append hooks (None entries are skipped); they run in registration order."""
        for h in hooks:
            if h is None:
                continue
            # A weak proxy avoids a reference cycle trainer <-> hook.
            h.trainer = weakref.proxy(self)
            self._hooks.append(h)

    def train(self, start_iter: int, max_iter: int) -> None:
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            if self._pending_storage_state is not None:  # the histories of the run this one resumes
                self.storage.load_state_dict(self._pending_storage_state)
                self._pending_storage_state = None
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # Marks a completed run (also one resumed from its final checkpoint): after_train sees
                # iter >= max_iter.
                self.iter = max(max_iter, start_iter)
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        ret = {"iteration": self.iter}
        hooks_state = {type(h).__qualname__: h.state_dict() for h in self._hooks}
        ret["hooks"] = {k: v for k, v in hooks_state.items() if v}
        if self.storage is not None:
            ret["storage"] = self.storage.state_dict()
        return ret

    def load_state_dict(self, state: dict) -> None:
        self.iter = state["iteration"]
        self._pending_storage_state = state.get("storage")
        by_name = {type(h).__qualname__: h for h in self._hooks}
        for name, value in state.get("hooks", {}).items():
            if name in by_name:
                by_name[name].load_state_dict(value)
            else:
                logger.warning("Cannot find the hook '%s': its state in the checkpoint is not restored", name)


class SimpleTrainer(TrainerBase):
    """One optimizer step per batch.

    Args:
        model: in training mode, `model(batch: list[dict]) -> dict[str, Tensor]` of scalar losses; the loss
            minimised is their sum.
        data_loader: iterable of batches (list[dict]); may be set after construction (its iterator is created
            in `before_train`). Its optional `num_skipped` attribute (samples replaced because corrupt) is logged.
        optimizer: a torch optimizer over the model's trainable parameters.
        clip_grad: optional callable applied to the list of trainable parameters after backward (and after
            unscaling under fp16 AMP), before the optimizer step.
        same_tasks_across_processes: check before each forward that every process's batch holds the same set of
            `task`s, and raise a clear error otherwise. FSDP needs it: its collectives require every process to
            run the same modules (tasks use different heads).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Optional[Iterable],
        optimizer: torch.optim.Optimizer,
        clip_grad: Optional[Callable[[List[torch.nn.Parameter]], None]] = None,
        same_tasks_across_processes: bool = False,
    ):
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.clip_grad = clip_grad
        self.same_tasks_across_processes = same_tasks_across_processes
        self._data_loader_iter = None
        # Counters that survive a resume: samples seen per task and corrupt samples skipped, over all processes.
        self.task_counts: Counter = Counter()
        self.num_skipped = 0
        self._num_skipped_before = 0  # by the loaders of earlier (resumed) runs

    def before_train(self) -> None:
        if self.data_loader is None:
            raise RuntimeError("SimpleTrainer.data_loader is not set")
        self._data_loader_iter = iter(self.data_loader)
        super().before_train()

    def run_step(self) -> None:
        assert self.model.training, "the model was switched to eval mode by a hook and not switched back"
        start = time.perf_counter()
        try:
            data = next(self._data_loader_iter)
        except StopIteration:
            raise RuntimeError(
                f"The training data loader ran out of batches at iteration {self.iter}; it must yield batches "
                f"indefinitely (the run's length is SOLVER.MAX_ITER)"
            ) from None
        data_time = time.perf_counter() - start
        if self.same_tasks_across_processes:
            self._check_same_tasks(data)
        loss_dict = self.forward(data)
        if not isinstance(loss_dict, dict):
            raise TypeError(f"The model must return a dict of scalar losses in training, got {type(loss_dict)}")
        losses = sum(loss_dict.values())
        self._gather_check_and_log(loss_dict, data_time, data)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward_and_step(losses)

    def forward(self, data: List[dict]) -> Dict[str, torch.Tensor]:
        return self.model(data)

    def backward_and_step(self, losses: torch.Tensor) -> None:
        losses.backward()
        if self.clip_grad is not None:
            self.clip_grad(self._trainable_params())
        self.optimizer.step()

    def _trainable_params(self) -> List[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _check_same_tasks(self, data: List[dict]) -> None:
        tasks = comm.all_gather(sorted({d.get("task", "") for d in data}))
        if any(t != tasks[0] for t in tasks):
            raise RuntimeError(
                f"Iteration {self.iter}: the processes' batches hold different tasks ({tasks}, by rank). Sharded "
                f"training (SOLVER.FSDP) needs every process to run the same modules in a step: use single-source "
                f"batches (DATALOADER.MIX_TASKS_IN_BATCH False) or DDP."
            )

    def _gather_check_and_log(self, loss_dict: Dict[str, torch.Tensor], data_time: float, data: List[dict]) -> None:
        """Gather losses, data time, task counts and skipped samples of every process; raise
        `NonFiniteLossError` on every process at once if any loss is not finite; record the reduced values."""
        local = {
            "losses": {k: v.detach().float().item() for k, v in loss_dict.items()},
            "data_time": data_time,
            "tasks": Counter(d["task"] for d in data if isinstance(d, dict) and "task" in d),
            "num_skipped": int(getattr(self.data_loader, "num_skipped", 0)),
        }
        gathered = comm.all_gather(local)
        bad = [(r, g["losses"]) for r, g in enumerate(gathered) if not all(map(math.isfinite, g["losses"].values()))]
        if bad:
            detail = "; ".join(f"rank {r}: " + ", ".join(f"{k}={v}" for k, v in sorted(ls.items())) for r, ls in bad)
            raise NonFiniteLossError(
                f"Loss became infinite or NaN at iteration={self.iter}: {detail}. Training stops here; no "
                f"checkpoint of this state is written (resume from the last checkpoint)."
            )
        storage = get_event_storage()
        # Each loss is logged as its share of the objective DDP minimises (the mean over processes of their loss
        # sums): its mean over all processes, 0 where a process's slice has no such loss. The logged losses add up
        # to total_loss, and a loss whose task sits on one process's slice reads as in a 1-process run, where
        # every loss is weighted by its task's share of the batch.
        keys = sorted({k for g in gathered for k in g["losses"]})
        n = len(gathered)
        storage.put_scalar("total_loss", sum(sum(g["losses"].values()) for g in gathered) / n)
        storage.put_scalars(**{k: sum(g["losses"].get(k, 0.0) for g in gathered) / n for k in keys})
        storage.put_scalar("data_time", max(g["data_time"] for g in gathered))
        for g in gathered:
            self.task_counts.update(g["tasks"])
        for task, n in self.task_counts.items():
            storage.put_scalar(f"data/count/{task}", n, smoothing_hint=False)
        self.num_skipped = self._num_skipped_before + sum(g["num_skipped"] for g in gathered)
        storage.put_scalar("data/num_skipped", self.num_skipped, smoothing_hint=False)

    def state_dict(self) -> dict:
        ret = super().state_dict()
        ret["task_counts"] = dict(self.task_counts)
        ret["num_skipped"] = self.num_skipped
        return ret

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.task_counts = Counter(state.get("task_counts", {}))
        self.num_skipped = self._num_skipped_before = int(state.get("num_skipped", 0))


class AMPTrainer(SimpleTrainer):
    """`SimpleTrainer` with automatic mixed precision: the forward runs under `torch.autocast(device_type,
    dtype)`; float16 scales the loss with a `GradScaler` (bfloat16 needs none).

    Args:
        model, data_loader, optimizer, clip_grad: as for `SimpleTrainer`.
        precision: torch.bfloat16 or torch.float16.
        device_type: "cuda" or "cpu" (where the model runs).
        grad_scaler: for float16, default `torch.amp.GradScaler(device_type)`.
    """

    def __init__(
        self,
        *args,
        precision: torch.dtype = torch.bfloat16,
        device_type: str = "cuda",
        grad_scaler: Optional["torch.amp.GradScaler"] = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if precision not in (torch.bfloat16, torch.float16):
            raise ValueError(f"AMP precision must be bfloat16 or float16, got {precision}")
        self.precision = precision
        self.device_type = device_type
        if precision == torch.float16 and grad_scaler is None:
            grad_scaler = torch.amp.GradScaler(device_type)
        self.grad_scaler = grad_scaler

    def forward(self, data: List[dict]) -> Dict[str, torch.Tensor]:
        with torch.autocast(device_type=self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
        return {k: v.float() for k, v in loss_dict.items()}

    def backward_and_step(self, losses: torch.Tensor) -> None:
        if self.grad_scaler is None:
            super().backward_and_step(losses)
            return
        self.grad_scaler.scale(losses).backward()
        if self.clip_grad is not None:
            self.grad_scaler.unscale_(self.optimizer)
            self.clip_grad(self._trainable_params())
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self) -> dict:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
