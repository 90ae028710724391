#!/usr/bin/env python
"""Train and evaluate PixelLLM with detectron2's engine (`DefaultTrainer`, `launch`, `DetectionCheckpointer`,
`inference_on_dataset`), for a setup built around detectron2. Needs detectron2 installed by its own guide; without
it use tools/train_net.py, which does the same with pixelllm_d2's own engine.

    python tools/train_net_detectron2.py --config-file CFG.yaml [--resume] [--eval-only] [--num-gpus N] [KEY VALUE ...]

`--num-gpus N` starts N processes with detectron2's `launch` (NCCL on GPUs, gloo on a machine without CUDA); pass
`--dist-url auto` to pick a free port. Checkpoints, metrics and evaluation files go to OUTPUT_DIR as with
tools/train_net.py.
"""
import logging

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch

import pixelllm_d2.d2 as pd2
from pixelllm_d2.utils.env import set_deterministic
from pixelllm_d2.utils.logger import setup_logger


def setup(args):
    """detectron2's config with PixelLLM's keys, the config file and `KEY VALUE` overrides, after `default_setup`."""
    cfg = get_cfg()
    pd2.add_pixelllm_config(cfg)
    cfg.merge_from_file(args.config_file, allow_unsafe=False)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    default_setup(cfg, args)
    from detectron2.utils import comm

    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="pixelllm_d2")
    set_deterministic(cfg.DETERMINISTIC, cfg.CUDNN_BENCHMARK)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = pd2.PixelLLMD2Trainer.build_model(cfg)
        pd2.D2Checkpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return pd2.PixelLLMD2Trainer.test(cfg, model)
    trainer = pd2.PixelLLMD2Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    logging.getLogger("pixelllm_d2").info("Command line arguments: %s", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url,
           args=(args,))
