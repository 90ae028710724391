"""Training engine: the loop with hooks, `DefaultTrainer`, checkpointing, optimizer / LR schedule builders and
the multi-process launcher (detectron2's `detectron2.engine` + `detectron2.solver` + `detectron2.checkpoint`)."""
from . import hooks
from .checkpoint import Checkpointer
from .defaults import DefaultTrainer, create_ddp_model, default_argument_parser, default_setup, format_metrics_table
from .launch import launch, launch_with_args
from .lr_scheduler import LRMultiplier, build_lr_scheduler
from .optimizer import build_grad_clipper, build_optimizer, get_param_groups
from .preflight import preflight
from .train_loop import AMPTrainer, HookBase, NonFiniteLossError, SimpleTrainer, TrainerBase

__all__ = [
    "hooks",
    "Checkpointer",
    "DefaultTrainer",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "format_metrics_table",
    "launch",
    "launch_with_args",
    "LRMultiplier",
    "build_lr_scheduler",
    "build_grad_clipper",
    "build_optimizer",
    "get_param_groups",
    "preflight",
    "AMPTrainer",
    "HookBase",
    "NonFiniteLossError",
    "SimpleTrainer",
    "TrainerBase",
]
