#!/usr/bin/env python
"""Train and evaluate PixelLLM with `DefaultTrainer` (detectron2's tools/train_net.py).

    python tools/train_net.py --config-file CFG.yaml [--resume] [--eval-only] [--num-gpus N] [KEY VALUE ...]

`--num-gpus N` starts N processes (DDP; NCCL on GPUs, gloo on a machine without CUDA, i.e. N CPU processes);
`torchrun --nproc-per-node N tools/train_net.py ...` works too. See `python tools/train_net.py -h`.
Bad input (config, files, weights, a missing Java for METEOR) is one line and exit status 2 (`--debug` for the
traceback); Ctrl-C or SIGTERM checkpoints the current iteration and exits 130 / 143 (`--resume` continues).
"""
from pixelllm_d2.utils.cli import default_argument_parser, quiet_dependency_warnings, run_tool


def setup(args):
    """The config of `args` (file, then `KEY VALUE` overrides), frozen, after `default_setup`."""
    from pixelllm_d2.config import get_cfg
    from pixelllm_d2.engine import default_setup

    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args, trainer_cls=None):
    """Train (resuming with `--resume`) or, with `--eval-only`, evaluate MODEL.WEIGHTS (or the last checkpoint
    with `--resume`). Returns the evaluation results."""
    from pixelllm_d2.engine import Checkpointer, DefaultTrainer

    trainer_cls = trainer_cls or DefaultTrainer
    cfg = setup(args)
    if args.eval_only:
        trainer_cls.preflight(cfg, train=False)
        model = trainer_cls.build_model(cfg)
        Checkpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return trainer_cls.test(cfg, model)
    trainer_cls.preflight(cfg, train=True, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch_main(args):
    from pixelllm_d2.engine import launch_with_args

    return launch_with_args(main, args)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    quiet_dependency_warnings()
    run_tool(launch_main, args)
