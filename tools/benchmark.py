#!/usr/bin/env python
"""Benchmarks of a config, printed as a table (or JSON with --json).

    python tools/benchmark.py --config-file CFG.yaml [CFG2.yaml ...] --task train [--iters N] [--json] [KEY VALUE ...]

--task train: the exact training step of `DefaultTrainer` (data, forward, loss gathering, backward, clipping,
optimizer step; no hooks) for `--warmup` untimed then `--iters` timed iterations; reports iterations/s,
images/s (over all processes) and peak memory (CUDA max allocated on a GPU, process RSS peak on CPU). Several
config files give one row each (e.g. the tiny and the paper-scale config on a GPU). `--num-gpus N` benchmarks N
processes (DDP).

A new task is a function `(cfg, args, trainer_cls) -> dict` registered with `@register_task("name")`.
"""
import argparse
import gc
import json
import logging
import sys
import time
from typing import Callable, Dict, List

import torch

from pixelllm_d2.config import get_cfg
from pixelllm_d2.engine import DefaultTrainer, launch_with_args
from pixelllm_d2.modeling.build import resolve_device
from pixelllm_d2.utils import comm
from pixelllm_d2.utils.env import seed_all_rng
from pixelllm_d2.utils.events import EventStorage
from pixelllm_d2.utils.memory import peak_memory_mib, reset_peak_memory

TASKS: Dict[str, Callable] = {}


def register_task(name: str):
    def deco(fn):
        TASKS[name] = fn
        return fn

    return deco


class _CountingLoader:
    """Passes batches through and counts the images of this process."""

    def __init__(self, loader):
        self.loader = loader
        self.images = 0

    @property
    def num_skipped(self) -> int:
        return getattr(self.loader, "num_skipped", 0)

    def __iter__(self):
        for batch in self.loader:
            self.images += len(batch)
            yield batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@register_task("train")
def benchmark_train(cfg, args, trainer_cls=DefaultTrainer) -> Dict:
    """Training throughput of `cfg`.

    Returns:
        dict with iters, iters_per_s, images_per_s (all processes), peak_memory_mib and its kind, device,
        processes, amp.
    """
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else None)
    device = resolve_device(cfg.MODEL.DEVICE)

    class _Timed(trainer_cls):
        def build_hooks(self):
            return []  # no checkpoints, evaluation or writers: the step alone is timed

    trainer = _Timed(cfg)
    loop = trainer._trainer
    loader = _CountingLoader(trainer_cls.build_train_loader(cfg, start_iter=0, seed=trainer.data_seed))
    loop.data_loader = loader
    with EventStorage(0) as storage:
        loop.before_train()
        for i in range(args.warmup):
            storage.iter = loop.iter = i
            loop.run_step()
        _sync(device)
        reset_peak_memory(device)
        images_before = loader.images
        start = time.perf_counter()
        for i in range(args.warmup, args.warmup + args.iters):
            storage.iter = loop.iter = i
            loop.run_step()
        _sync(device)
        elapsed = time.perf_counter() - start
    images = sum(comm.all_gather(loader.images - images_before))
    kind, mib = peak_memory_mib(device)
    peak = max(comm.all_gather(mib))
    del trainer, loop, loader
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "iters": args.iters,
        "iters_per_s": args.iters / elapsed,
        "images_per_s": images / elapsed,
        "peak_memory_mib": peak,
        "peak_memory_kind": kind,
        "device": str(device),
        "processes": comm.get_world_size(),
        "amp": cfg.SOLVER.AMP.DTYPE if cfg.SOLVER.AMP.ENABLED else "off",
    }


def format_table(rows: List[Dict]) -> str:
    from tabulate import tabulate

    return tabulate(
        [
            (
                r["config"],
                r["task"],
                r["device"],
                r["processes"],
                r["amp"],
                r["iters"],
                f"{r['iters_per_s']:.3f}",
                f"{r['images_per_s']:.2f}",
                f"{r['peak_memory_mib']:.0f} ({r['peak_memory_kind']})",
            )
            for r in rows
        ],
        headers=["config", "task", "device", "procs", "AMP", "iters", "iter/s", "images/s", "peak MiB"],
        tablefmt="pipe",
    )


def run(args, trainer_cls=DefaultTrainer) -> List[Dict]:
    """Benchmark every config file of `args` with `args.task`; rank 0 prints the table (or JSON).

    Returns:
        one dict per config (with `config` and `task`).
    """
    log = logging.getLogger("pixelllm_d2")
    if not log.handlers:
        # Progress to stderr so stdout holds only the result (parsable with --json).
        log.setLevel(logging.INFO if comm.is_main_process() else logging.WARNING)
        log.addHandler(logging.StreamHandler(sys.stderr))
        log.propagate = False
    rows = []
    for path in args.config_file:
        cfg = get_cfg()
        cfg.merge_from_file(path)
        cfg.merge_from_list(args.opts or [])
        cfg.freeze()
        rows.append({"config": path, "task": args.task, **TASKS[args.task](cfg, args, trainer_cls)})
    if comm.is_main_process():
        print(json.dumps(rows, indent=2) if args.json else format_table(rows), flush=True)
    return rows


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", nargs="+", required=True, metavar="FILE", help="one or more configs")
    parser.add_argument("--task", choices=sorted(TASKS), default="train", help="what to benchmark")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before timing")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (one per GPU; CPU processes without CUDA)")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every config")
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    launch_with_args(run, args)
