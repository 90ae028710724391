"""Training PixelLLM with detectron2's engine: a `DefaultTrainer` subclass and a `DetectionCheckpointer` with
PixelLLM's safety.

What differs from detectron2's `DefaultTrainer` and why:
- DDP wraps the model with `device_ids` only on GPUs (detectron2 always passes `[local_rank]`, which fails on CPU)
  and `find_unused_parameters=SOLVER.DDP_FIND_UNUSED_PARAMETERS` (True by default: a single-task batch leaves the
  other tasks' heads unused; detectron2's False fails at iteration 2);
- AMP uses `SOLVER.AMP.DTYPE` (bfloat16 by default; detectron2's is float16), on GPUs (detectron2's AMP needs CUDA);
- the optimizer, LR schedule, gradient clipping (`CLIP_TYPE` "norm" = the total norm), data loaders and evaluators
  are PixelLLM's; the training loader is built when training starts, at the resumed iteration, so a resumed run
  sees exactly the batches the interrupted one would have (batch k is a function of the data seed and k);
- checkpoints also hold every process's RNG states and the data seed, and are saved by every process (the RNG
  states are gathered; rank 0 writes): `--resume` continues bit-identically (`DETERMINISTIC True`, same number of
  processes; evaluations during training, `TEST.EVAL_PERIOD`, draw from the RNGs and break that);
- `D2Checkpointer` reads weights-only (a `.pkl` / `.pyth` pickle is refused), reads `.safetensors`, refuses weights
  that do not fit (`verify_state_dict`), and writes atomically.
"""
import logging
import weakref
from typing import List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.modeling import build_model as d2_build_model
from detectron2.utils import comm as d2_comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..data import build_test_loader, build_train_loader
from ..engine.checkpoint import Checkpointer
from ..engine.lr_scheduler import build_lr_scheduler
from ..engine.optimizer import build_grad_clipper, build_optimizer
from ..utils import comm
from ..utils.env import get_rng_state, set_rng_state
from .evaluation import build_d2_evaluator

__all__ = ["D2Checkpointer", "PixelLLMD2Trainer"]

logger = logging.getLogger(__name__)


class D2Checkpointer(Checkpointer, DetectionCheckpointer):
    """detectron2's `DetectionCheckpointer` (its path handling, DDP-aware loading) with PixelLLM's `Checkpointer`
    taking precedence: weights-only torch files or safetensors, refusal of weights that do not fit, atomic writes,
    collective saves. A pickle file (`.pkl`, `.pyth`: detectron2's model-zoo / Caffe2 formats) is refused: it can
    run code when read."""

    def _load_file(self, f: str):
        if f.endswith((".pkl", ".pyth")):
            raise ValueError(f"{f}: a pickle file; refused because unpickling can run arbitrary code. Convert it to "
                             f".safetensors or a tensor-only .pth")
        return super()._load_file(f)


def _loop_class(base):
    class Loop(base):
        """detectron2's training loop with PixelLLM's gradient clipping after the backward pass (after unscaling
        under a float16 GradScaler)."""

        def __init__(self, *args, clip_grad=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.clip_grad = clip_grad

        def after_backward(self):
            if self.clip_grad is not None:
                scaler = getattr(self, "grad_scaler", None)
                if scaler is not None:
                    scaler.unscale_(self.optimizer)
                self.clip_grad([p for g in self.optimizer.param_groups for p in g["params"]])
            super().after_backward()

    Loop.__name__ = f"Clipping{base.__name__}"
    return Loop


class PixelLLMD2Trainer(DefaultTrainer):
    """detectron2's `DefaultTrainer` for PixelLLM (module docstring), from a detectron2 config with
    `add_pixelllm_config`::

        trainer = PixelLLMD2Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        model = self._wrap_ddp(model, cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS)
        clip = build_grad_clipper(cfg)
        if cfg.SOLVER.AMP.ENABLED:
            if not torch.cuda.is_available():
                raise ValueError("SOLVER.AMP with detectron2's trainer needs CUDA (detectron2's AMPTrainer)")
            self._trainer = _loop_class(AMPTrainer)(model, None, optimizer, precision=getattr(torch, cfg.SOLVER.AMP.DTYPE), clip_grad=clip)
        else:
            self._trainer = _loop_class(SimpleTrainer)(model, None, optimizer, clip_grad=clip)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = D2Checkpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.data_seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        self._pending_rng_state = None
        self.register_hooks(self.build_hooks())

    @staticmethod
    def _wrap_ddp(model: torch.nn.Module, find_unused: bool) -> torch.nn.Module:
        if d2_comm.get_world_size() == 1:
            return model
        comm.broadcast_module_state(model)  # rank 0's parameters and buffers (random buffers too) everywhere
        device_ids = [d2_comm.get_local_rank()] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=find_unused)

    # ------------------------------------------------------------------------------------------ builders
    @classmethod
    def build_model(cls, cfg) -> torch.nn.Module:
        """detectron2's `build_model` (the registered `D2PixelLLM`, component weights loaded)."""
        model = d2_build_model(cfg)
        logger.info("Model %s: %d parameters, %d trainable", cfg.MODEL.META_ARCHITECTURE,
                    sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad))
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0, seed: Optional[int] = None):
        return build_train_loader(cfg, start_iter=start_iter, seed=seed)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder=None):
        return build_d2_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self) -> List[hooks.HookBase]:
        """detectron2's hooks, the checkpointer on every process (saves gather every process's RNG states)."""
        cfg = self.cfg

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret = [hooks.IterationTimer(), hooks.LRScheduler(),
               hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD),
               hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results)]
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.SOLVER.LOG_PERIOD))
        return ret

    # ------------------------------------------------------------------------------------------ exact resume
    def train(self):
        if self._trainer.data_loader is None:
            self._trainer.data_loader = self.build_train_loader(self.cfg, start_iter=self.start_iter, seed=self.data_seed)
        return super().train()

    def before_train(self):
        if self._pending_rng_state is not None:
            set_rng_state(self._pending_rng_state)
            self._pending_rng_state = None
        super().before_train()

    def state_dict(self):
        """Collective (gathers the RNG states of every process)."""
        ret = super().state_dict()
        ret["rng_states"] = comm.all_gather(get_rng_state())
        ret["data"] = {"seed": self.data_seed, "start_iter": self.iter + 1}
        return ret

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.data_seed = state.get("data", {}).get("seed", self.data_seed)
        rng = state.get("rng_states", [])
        if len(rng) == comm.get_world_size():
            self._pending_rng_state = rng[comm.get_rank()]
        else:
            logger.warning("The checkpoint holds the RNG states of %d processes, this run has %d: RNG streams are not "
                           "restored", len(rng), comm.get_world_size())
