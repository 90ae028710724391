#!/usr/bin/env python
"""Benchmarks of a config, printed as a table (or JSON with --json).

    python tools/benchmark.py --config-file CFG.yaml [CFG2.yaml ...] --task train [--iters N] [--json] [KEY VALUE ...]
    python tools/benchmark.py --config-file CFG.yaml --task densecap [--regions 100] [--input IMG] [KEY VALUE ...]

--task train: the exact training step of `DefaultTrainer` (data, forward, loss gathering, backward, clipping,
optimizer step; no hooks) for `--warmup` untimed then `--iters` timed iterations; reports iterations/s,
images/s (over all processes) and peak memory (CUDA max allocated on a GPU, process RSS peak on CPU). Several
config files give one row each (e.g. the tiny and the paper-scale config on a GPU). `--num-gpus N` benchmarks N
processes (DDP).

--task densecap: captions `--regions` boxes of one image (`--input`, default a generated shapes scene resized to
INPUT.IMAGE_SIZE) with the same weights (MODEL.WEIGHTS, or the seeded random init) in two ways, `--iters` times
each after `--warmup` untimed runs, and reports the median wall time of each: ours (`ours_s`: one batched greedy
decode with the KV cache, per-word locations read from the decoder states while decoding) and the official scheme
(`official_s`: the whole prefix recomputed at every step, then the language model re-run teacher-forced on the
decoded tokens for the per-word locations, as `auto_regressive_decode.py` + `predict_points`). The visual tokens of
the regions are computed once and shared; `identical` says whether both gave the same tokens.

With --json, one config prints its result object; several print a list of them.

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
    loader = _CountingLoader(trainer_cls.build_train_loader(cfg, start_iter=0, seed=trainer.data_seed))
    trainer.data_loader = loader
    with EventStorage(0) as storage:
        trainer.before_train()  # no hooks: creates the loader's iterator
        for i in range(args.warmup):
            storage.iter = trainer.iter = i
            trainer.run_step()
        _sync(device)
        reset_peak_memory(device)
        images_before = loader.images
        start = time.perf_counter()
        for i in range(args.warmup, args.warmup + args.iters):
            storage.iter = trainer.iter = i
            trainer.run_step()
        _sync(device)
        elapsed = time.perf_counter() - start
    images = sum(comm.all_gather(loader.images - images_before))
    kind, mib = peak_memory_mib(device)
    peak = max(comm.all_gather(mib))
    del trainer, loader
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


def _region_boxes(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """(n, 4) XYXY boxes inside an h x w image: random sizes from 1/8 to 1/2 of the side, fixed by `seed`."""
    g = torch.Generator().manual_seed(seed)
    size = torch.rand(n, 2, generator=g) * 0.375 + 0.125
    x0 = torch.rand(n, generator=g) * (1 - size[:, 0]) * w
    y0 = torch.rand(n, generator=g) * (1 - size[:, 1]) * h
    return torch.stack([x0, y0, x0 + size[:, 0] * w, y0 + size[:, 1] * h], dim=1)


def _shapes_scene():
    """(H, W, 3) uint8 RGB: one scene of the embedded benchmark's generator, fixed by seed 0."""
    import numpy as np

    from pixelllm_d2.data.datasets.shapes_scenes import render_scene, sample_scene

    rng = np.random.default_rng(0)
    width, height, objects = sample_scene(rng)
    return render_scene(rng, width, height, objects)


def _median_time(fn, device, warmup: int, iters: int):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(iters, 1)):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


@register_task("densecap")
def benchmark_densecap(cfg, args, trainer_cls=DefaultTrainer) -> Dict:
    """Captioning `args.regions` regions of one image: KV-cached batched decoding vs the official scheme.

    Returns:
        dict with regions, ours_s, official_s, official_decode_s (the recomputing decode without the teacher-forced
        re-run), speedup (official_s / ours_s), mean_tokens (per region), identical, device, image_size.
    """
    import torch.nn.functional as F
    from torch.nn.utils.rnn import pad_sequence

    from pixelllm_d2.predictor import PixelLLMPredictor

    seed = cfg.SEED if cfg.SEED >= 0 else 0
    seed_all_rng(seed)
    predictor = PixelLLMPredictor(cfg)
    model, device = predictor.model, predictor.model.device
    x = predictor.prepare(args.input or _shapes_scene(), task="densecap")  # the image alone, resized
    h, w = x["image"].shape[-2:]
    boxes = _region_boxes(args.regions, h, w, seed).to(device)
    dec = dict(model.decode_cfg, method="greedy")
    with torch.no_grad():
        features = model.encode_images([x])
        index = torch.zeros(len(boxes), dtype=torch.long, device=device)
        visual = model.encode_boxes(features, index, boxes)
        enc_h, enc_m = model.language.encode(visual, model.context_ids("region", len(boxes)), model.tokenizer.pad_id)
        wh = torch.tensor([[w, h]], dtype=torch.float32, device=device).expand(len(boxes), 2)

        def ours():
            return model.decode_captions(enc_h, enc_m, wh, dec, use_cache=True, image_map=features.fused, image_index=index)

        def official_decode():
            return model.decode_captions(enc_h, enc_m, wh, dec, use_cache=False, image_map=features.fused, image_index=index)

        def official():
            outs = official_decode()
            # predict_points: the language model re-run teacher-forced on the decoded tokens, the head on every state
            target = pad_sequence([o["token_ids"] for o in outs], batch_first=True, padding_value=model.tokenizer.pad_id)
            hidden, _, _ = model.language.decode(enc_h, enc_m, F.pad(target, (1, 0), value=model.tokenizer.pad_id))
            model.location_head.locate(hidden, wh, features.fused, index)
            return outs

        ours_s, a = _median_time(ours, device, args.warmup, args.iters)
        official_decode_s, _ = _median_time(official_decode, device, args.warmup, args.iters)
        official_s, b = _median_time(official, device, args.warmup, args.iters)
    identical = all(torch.equal(p["token_ids"], q["token_ids"]) for p, q in zip(a, b))
    return {
        "regions": int(len(boxes)),
        "ours_s": ours_s,
        "official_s": official_s,
        "official_decode_s": official_decode_s,
        "speedup": official_s / ours_s,
        "mean_tokens": float(sum(len(o["token_ids"]) for o in a) / max(len(a), 1)),
        "identical": bool(identical),
        "device": str(device),
        "image_size": [int(h), int(w)],
    }


def format_table(rows: List[Dict]) -> str:
    from tabulate import tabulate

    if rows and rows[0]["task"] == "densecap":
        return tabulate(
            [
                (r["config"], r["device"], r["regions"], f"{r['mean_tokens']:.1f}", f"{r['ours_s']:.3f}",
                 f"{r['official_s']:.3f}", f"{r['official_decode_s']:.3f}", f"{r['speedup']:.1f}x", r["identical"])
                for r in rows
            ],
            headers=["config", "device", "regions", "tokens/region", "ours s", "official s",
                     "official decode s", "speedup", "same tokens"],
            tablefmt="pipe",
        )
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
        result = rows[0] if len(rows) == 1 else rows
        print(json.dumps(result, indent=2) if args.json else format_table(rows), flush=True)
    return rows


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", nargs="+", required=True, metavar="FILE", help="one or more configs")
    parser.add_argument("--task", choices=sorted(TASKS), default="train", help="what to benchmark")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before timing")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--regions", type=int, default=100, help="densecap: regions captioned in one batch")
    parser.add_argument("--input", default="", help="densecap: the image (default: a generated shapes scene)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (one per GPU; CPU processes without CUDA)")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every config")
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    launch_with_args(run, args)
