"""The standard training workflow (detectron2's `detectron2.engine.defaults`): the command-line parser of
`tools/train_net.py`, `default_setup`, and `DefaultTrainer`."""
import argparse
import logging
import os
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from ..modeling import build_model
from ..modeling.build import resolve_device
from ..utils import comm
from ..utils.cli import default_argument_parser  # light: tools parse their command line before heavy imports
from ..utils.env import collect_env_info, get_rng_state, seed_all_rng, set_deterministic, set_rng_state
from ..utils.events import EventWriter, default_writers, truncate_json_metrics
from ..utils.file_io import atomic_write
from ..utils.logger import setup_logger
from . import fsdp, hooks
from .checkpoint import Checkpointer, NamedOptimizerState
from .lr_scheduler import build_lr_scheduler
from .optimizer import build_grad_clipper, build_optimizer
from .preflight import preflight
from .train_loop import AMPTrainer, SimpleTrainer, TrainerBase

__all__ = ["default_argument_parser", "default_setup", "DefaultTrainer", "create_ddp_model", "format_metrics_table"]

logger = logging.getLogger(__name__)


def default_setup(cfg, args: Optional[argparse.Namespace] = None) -> None:
    """Per-process setup at the start of a job: create OUTPUT_DIR, set up logging (console on rank 0,
    OUTPUT_DIR/log.txt), log the environment, the arguments and the config file, save the full config to
    OUTPUT_DIR/config.yaml, seed every RNG (cfg.SEED + rank; a negative SEED draws a random seed, logged), and
    set deterministic kernels (cfg.DETERMINISTIC)."""
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    comm.synchronize()
    setup_logger(output_dir or None, distributed_rank=rank, name="fvcore")
    log = setup_logger(output_dir or None, distributed_rank=rank)
    log.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    log.info("Environment info:\n%s", collect_env_info())
    if args is not None:
        log.info("Command line arguments: %s", args)
        if getattr(args, "config_file", ""):
            with open(args.config_file, encoding="utf-8") as f:
                log.info("Contents of args.config_file=%s:\n%s", args.config_file, f.read())
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        with atomic_write(path, "w") as f:
            f.write(cfg.dump())
        log.info("Full config saved to %s", path)
    seed = seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    log.info("Seeded the RNGs of rank %d with %d", rank, seed)
    set_deterministic(cfg.DETERMINISTIC, cfg.CUDNN_BENCHMARK)


def create_ddp_model(model: torch.nn.Module, find_unused_parameters: bool = True) -> torch.nn.Module:
    """Wrap in DistributedDataParallel when there is more than one process (on the process's CUDA device, or on
    CPU with gloo), after giving every process rank 0's parameters and buffers. Unused parameters must be allowed
    when batches of different tasks leave heads unused."""
    if comm.get_world_size() == 1:
        return model
    comm.broadcast_module_state(model)
    device_ids = [comm.get_local_rank()] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(
        model, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=find_unused_parameters
    )


def format_metrics_table(results: Dict) -> str:
    """A table of evaluation results: one row per (dataset, metric) of a {dataset: {metric: value}} dict, or per
    metric of a flat {metric: value} dict."""
    from tabulate import tabulate

    flat = hooks.flatten_results_dict(results)
    return tabulate([(k, f"{v:.4f}") for k, v in flat.items()], headers=["metric", "value"], tablefmt="pipe")


class DefaultTrainer(TrainerBase):
    """A trainer with the standard logic (detectron2's DefaultTrainer): builds the model, optimizer, LR
    scheduler, data loader, checkpointer and hooks from a config; runs DDP (or FSDP with SOLVER.FSDP) over all
    processes; `resume_or_load` continues a run exactly.

    Override the classmethods `build_model`, `build_optimizer`, `build_lr_scheduler`, `build_train_loader`,
    `build_test_loader`, `build_evaluator` and `inference_on_dataset` to change a part, e.g.::

        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()

    Checkpoints (`OUTPUT_DIR/model_{iter:07d}.pth`, `model_final.pth`) hold `model` (full state dict),
    `optimizer` (keyed by parameter name, with or without FSDP), `scheduler`, `iteration` and `trainer` (RNG
    states of every process, the data seed and position, counters, AMP scaler).
    """

    def __init__(self, cfg):
        super().__init__()
        if not logging.getLogger("pixelllm_d2").isEnabledFor(logging.INFO):
            setup_logger()
        self.cfg = cfg
        self.device = resolve_device(cfg.MODEL.DEVICE)
        model = self.build_model(cfg)
        use_fsdp = cfg.SOLVER.FSDP and comm.get_world_size() > 1
        if cfg.SOLVER.FSDP and not use_fsdp:
            logger.info("SOLVER.FSDP is set but there is a single process: training without sharding")
        if use_fsdp:
            model = fsdp.shard_model(model, self.device, cfg.SOLVER.FSDP_SHARD_MODULES)
        optimizer = self.build_optimizer(cfg, model)
        if not use_fsdp:
            model = create_ddp_model(model, cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS)
        self._trainer = self._build_loop(cfg, model, optimizer, use_fsdp)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = Checkpointer(
            model,
            cfg.OUTPUT_DIR,
            optimizer=(fsdp.FullOptimizerState if use_fsdp else NamedOptimizerState)(model, optimizer),
            scheduler=self.scheduler,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        # Batch k of the run is a function of (data_seed, k): the data position is the iteration.
        self.data_seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        self._pending_rng_state = None
        self._last_eval_results = None
        self.register_hooks(self.build_hooks())

    def _build_loop(self, cfg, model, optimizer, use_fsdp: bool) -> SimpleTrainer:
        kwargs = {"clip_grad": build_grad_clipper(cfg), "same_tasks_across_processes": use_fsdp}
        if not cfg.SOLVER.AMP.ENABLED:
            return SimpleTrainer(model, None, optimizer, **kwargs)
        if cfg.SOLVER.AMP.DTYPE not in ("bfloat16", "float16"):
            raise ValueError(f"SOLVER.AMP.DTYPE must be 'bfloat16' or 'float16', got {cfg.SOLVER.AMP.DTYPE!r}")
        dtype = getattr(torch, cfg.SOLVER.AMP.DTYPE)
        if dtype == torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            logger.warning("bfloat16 is not supported by this GPU: AMP uses float16 with a GradScaler")
            dtype = torch.float16
        if dtype == torch.float16 and use_fsdp:
            raise ValueError("SOLVER.FSDP with SOLVER.AMP.DTYPE float16 is not supported; use bfloat16")
        return AMPTrainer(model, None, optimizer, precision=dtype, device_type=self.device.type, **kwargs)

    @property
    def model(self) -> torch.nn.Module:
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    @property
    def data_loader(self):
        """The training loader (built by `train()` unless set before)."""
        return self._trainer.data_loader

    @data_loader.setter
    def data_loader(self, loader) -> None:
        self._trainer.data_loader = loader

    def resume_or_load(self, resume: bool = True) -> None:
        """With `resume` and an `OUTPUT_DIR/last_checkpoint`, restore everything from it and continue after its
        iteration (metrics.json lines logged after that iteration by the interrupted run are dropped: the
        continuation logs them again); otherwise load the model weights of cfg.MODEL.WEIGHTS (if set) and start
        at iteration 0."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
            if comm.is_main_process():
                truncate_json_metrics(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), self.iter)

    def build_hooks(self) -> List[hooks.HookBase]:
        """IterationTimer, LRScheduler, PeriodicCheckpointer, StopOnSignal, EvalHook, and (main process)
        PeriodicWriter."""
        cfg = self.cfg
        ret = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.FINAL_SAFETENSORS),
            hooks.StopOnSignal(self.checkpointer),
        ]

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, _unwrap_ddp(self.model))
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.SOLVER.LOG_PERIOD))
        return ret

    def build_writers(self) -> List[EventWriter]:
        """Console, OUTPUT_DIR/metrics.json and TensorBoard events in OUTPUT_DIR."""
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter, self.device)

    def train(self) -> Optional[Dict]:
        """Run training from `start_iter` to SOLVER.MAX_ITER.

        Returns:
            the results of the final evaluation (None without DATASETS.TEST).
        """
        last = os.path.basename(self.checkpointer.get_checkpoint_file() or "")
        if self.start_iter >= self.max_iter and last.startswith("model_final"):
            logger.warning(
                "OUTPUT_DIR %s holds a finished run (%d of SOLVER.MAX_ITER %d iterations): nothing to train. Evaluate "
                "it with --eval-only --resume, or raise SOLVER.MAX_ITER to train further.",
                self.cfg.OUTPUT_DIR, self.start_iter, self.max_iter,
            )
            return None
        if self._trainer.data_loader is None:
            self._trainer.data_loader = self.build_train_loader(
                self.cfg, start_iter=self.start_iter, seed=self.data_seed
            )
        super().train(self.start_iter, self.max_iter)
        return self._last_eval_results

    def before_train(self) -> None:
        # The loader's iterator is created first (a torch DataLoader draws its base seed from the global RNG),
        # then the checkpoint's RNG states are restored: the first step sees exactly the saved streams.
        self._trainer.before_train()
        if self._pending_rng_state is not None:
            set_rng_state(self._pending_rng_state)
            self._pending_rng_state = None
        super().before_train()

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def state_dict(self) -> dict:
        """Collective (gathers the RNG states of every process)."""
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        ret["rng_states"] = comm.all_gather(get_rng_state())
        ret["data"] = {"seed": self.data_seed, "start_iter": self.iter + 1}
        return ret

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._trainer.load_state_dict(state["_trainer"])
        self.data_seed = state["data"]["seed"]
        rng = state.get("rng_states", [])
        if len(rng) == comm.get_world_size():
            self._pending_rng_state = rng[comm.get_rank()]
        else:
            logger.warning(
                "The checkpoint holds the RNG states of %d processes, this run has %d: RNG streams are not restored, "
                "so the continuation is not bit-identical to an uninterrupted run",
                len(rng),
                comm.get_world_size(),
            )

    @classmethod
    def preflight(cls, cfg, train: bool = True, resume: bool = False, overwrite: bool = False) -> None:
        """`engine.preflight`: what the run will need, checked before the model is built."""
        preflight(cfg, train=train, resume=resume, overwrite=overwrite)

    @classmethod
    def build_model(cls, cfg) -> torch.nn.Module:
        """`pixelllm_d2.modeling.build_model(cfg)`, with its parameter counts logged."""
        model = build_model(cfg)
        n_all = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info("Model %s: %d parameters, %d trainable", cfg.MODEL.META_ARCHITECTURE, n_all, n_train)
        logger.debug("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0, seed: Optional[int] = None):
        """`pixelllm_d2.data.build_train_loader`: an iterator of batches (list[dict]) starting at batch
        `start_iter`, where batch k is a function of (seed, k) and each process gets its slice."""
        from ..data import build_train_loader

        return build_train_loader(cfg, start_iter=start_iter, seed=seed)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        from ..data import build_test_loader

        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str):
        from ..evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def inference_on_dataset(cls, model: torch.nn.Module, data_loader, evaluator) -> Dict:
        from ..evaluation import inference_on_dataset

        return inference_on_dataset(model, data_loader, evaluator)

    @classmethod
    def test(cls, cfg, model: torch.nn.Module, evaluators: Optional[List] = None) -> Dict:
        """Evaluate `model` on every dataset of cfg.DATASETS.TEST; results land in
        OUTPUT_DIR/inference/<dataset>/ (written by the evaluator) and a table is logged.

        Args:
            evaluators: one per dataset of DATASETS.TEST; default `build_evaluator`.
        Returns:
            {dataset: {metric: value}}; with a single dataset its {metric: value} alone (detectron2's habit).
        """
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} datasets in DATASETS.TEST")
        was_training = model.training
        results = OrderedDict()
        try:
            for idx, name in enumerate(cfg.DATASETS.TEST):
                loader = cls.build_test_loader(cfg, name)
                folder = os.path.join(cfg.OUTPUT_DIR, "inference", name)
                evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name, folder)
                results[name] = cls.inference_on_dataset(model, loader, evaluator)
                if comm.is_main_process():
                    logger.info("Evaluation results for %s:\n%s", name, format_metrics_table(results[name] or {}))
        finally:
            model.train(was_training)
        if comm.is_main_process() and len(results) > 1:
            logger.info("Evaluation results:\n%s", format_metrics_table(results))
        return list(results.values())[0] if len(results) == 1 else results


def _unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
