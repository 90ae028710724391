#!/usr/bin/env python
"""Benchmarks of a config, printed as a table (or JSON with --json).

    python tools/benchmark.py --config-file CFG.yaml [CFG2.yaml ...] --task train [--iters N] [--json] [KEY VALUE ...]
    python tools/benchmark.py --config-file CFG.yaml --task densecap [--regions 100] [--input IMG] [KEY VALUE ...]
    python tools/benchmark.py --config-file CFG.yaml --task profile [--iters N] [--top K] [KEY VALUE ...]

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

--task profile: where the training step's time goes, per task of the batch: mean milliseconds of forward,
backward, optimizer step and the rest (data, loss gathering) per step, then the top `--top` operators
(torch.profiler, self time) and Python frames (cProfile: by self time, and this project's frames by cumulative time).

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
        self.last_task = ""

    @property
    def num_skipped(self) -> int:
        return getattr(self.loader, "num_skipped", 0)

    def __iter__(self):
        for batch in self.loader:
            self.images += len(batch)
            self.last_task = "+".join(sorted({str(x.get("task", "?")) for x in batch if isinstance(x, dict)}))
            yield batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare_trainer(cfg, trainer_cls):
    """(trainer, counting loader): `trainer_cls` on `cfg` without hooks (no checkpoints, evaluation or writers)."""
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else None)

    class _Timed(trainer_cls):
        def build_hooks(self):
            return []

    trainer = _Timed(cfg)
    loader = _CountingLoader(trainer_cls.build_train_loader(cfg, start_iter=0, seed=trainer.data_seed))
    trainer.data_loader = loader
    return trainer, loader


@register_task("train")
def benchmark_train(cfg, args, trainer_cls=DefaultTrainer) -> Dict:
    """Training throughput of `cfg`.

    Returns:
        dict with iters, iters_per_s, images_per_s (all processes), peak_memory_mib and its kind, device,
        processes, amp.
    """
    device = resolve_device(cfg.MODEL.DEVICE)
    trainer, loader = _bare_trainer(cfg, trainer_cls)
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


class _PhaseClock:
    """Times the phases of the steps of a `DefaultTrainer` (its inner SimpleTrainer's forward, backward_and_step
    and optimizer.step are wrapped): per step, forward, backward (backward_and_step minus the optimizer step),
    optimizer and the rest (data, loss gathering, logging) in seconds."""

    def __init__(self, trainer, device):
        self.device, self.last = device, {}
        inner = trainer._trainer
        for obj, name, phase in ((inner, "forward", "forward"), (inner, "backward_and_step", "backward"),
                                 (inner.optimizer, "step", "optimizer")):
            setattr(obj, name, self._timed(getattr(obj, name), phase))

    def _timed(self, fn, phase):
        def wrapper(*args, **kwargs):
            _sync(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(self.device)
            self.last[phase] = time.perf_counter() - start
            return out

        return wrapper

    def step(self, trainer) -> Dict[str, float]:
        self.last = {}
        start = time.perf_counter()
        trainer.run_step()
        _sync(self.device)
        total = time.perf_counter() - start
        t = dict(self.last)
        t["backward"] = t.get("backward", 0.0) - t.get("optimizer", 0.0)
        t["other"] = total - t.get("forward", 0.0) - t["backward"] - t.get("optimizer", 0.0)
        t["total"] = total
        return t


def _frame_name(key) -> str:
    path, line, func = key
    if path == "~":  # a builtin
        return func
    parts = path.replace("\\", "/").split("/")
    return f"{'/'.join(parts[-2:])}:{line}({func})"


@register_task("profile")
def profile_train(cfg, args, trainer_cls=DefaultTrainer) -> Dict:
    """Where a training step's time goes, per task of the batch (batches of one task each, or a mix): after
    `--warmup` steps, passes of `--iters` steps each: plain wall times per phase; torch.profiler (the operators'
    self time); the step's FLOPs (torch's counter, at most 12 steps); cProfile (the Python frames, self and
    cumulative). Profilers slow the steps down, so only the first pass's times are the step's times.

    Returns:
        dict with device, iters and "tasks": {task: {"steps", "ms" (phase -> mean ms per step), "gflop" (per step,
        forward + backward), "gflop_per_s" (achieved: gflop over the mean step time), "ops" (top
        operators: name, self ms per step, calls per step), "frames_self" / "frames_project" (top Python frames by
        self time / this project's frames by cumulative time: name, ms per step)}}.
    """
    import cProfile
    import pstats
    from collections import Counter, defaultdict

    from torch.profiler import ProfilerActivity, profile

    from pixelllm_d2.utils.flops import count_flops

    device = resolve_device(cfg.MODEL.DEVICE)
    trainer, loader = _bare_trainer(cfg, trainer_cls)
    clock = _PhaseClock(trainer, device)
    phases = defaultdict(lambda: defaultdict(list))
    op_ms, op_calls, steps_profiled = defaultdict(Counter), defaultdict(Counter), Counter()
    py = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with EventStorage(0) as storage:
        trainer.before_train()
        it = 0

        def step():
            nonlocal it
            storage.iter = trainer.iter = it
            it += 1
            return clock.step(trainer)

        for _ in range(args.warmup):
            step()
        for _ in range(args.iters):
            t = step()
            for k, v in t.items():
                phases[loader.last_task][k].append(v)
        for _ in range(args.iters):
            with profile(activities=activities) as prof:
                step()
            task = loader.last_task
            steps_profiled[task] += 1
            for e in prof.key_averages():
                op_ms[task][e.key] += (e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total) / 1e3
                op_calls[task][e.key] += e.count
        flops = defaultdict(list)
        for _ in range(min(args.iters, 12)):
            _, n = count_flops(step)
            flops[loader.last_task].append(n)
        for _ in range(args.iters):
            pr = cProfile.Profile()
            pr.enable()
            step()
            pr.disable()
            py.setdefault(loader.last_task, []).append(pr)
    tasks = {}
    top = max(1, args.top)
    for task in sorted(set(phases) | set(steps_profiled) | set(py)):  # each pass draws its own batches
        times = phases.get(task, {})
        row = {"steps": len(times.get("total", [])), "profiled_steps": steps_profiled[task],
               "ms": {k: 1e3 * sum(v) / len(v) for k, v in times.items()}}
        n = max(1, steps_profiled[task])
        row["ops"] = [(name, ms / n, op_calls[task][name] / n) for name, ms in op_ms[task].most_common(top)]
        if flops.get(task):
            row["gflop"] = sum(flops[task]) / len(flops[task]) / 1e9
            if "total" in row["ms"]:
                row["gflop_per_s"] = row["gflop"] / (row["ms"]["total"] / 1e3)
        if task in py:
            stats = pstats.Stats(*py[task])
            k = len(py[task])
            rows = [(_frame_name(key), tt * 1e3 / k, ct * 1e3 / k, key[0]) for key, (_, _, tt, ct, _) in stats.stats.items()]
            row["frames_self"] = [(f, tt) for f, tt, _, _ in sorted(rows, key=lambda r: -r[1])[:top]]
            row["frames_project"] = [(f, ct) for f, _, ct, path in sorted(rows, key=lambda r: -r[2])
                                     if "pixelllm_d2" in path.replace("\\", "/")][:top]
        tasks[task] = row
    trainer = loader = clock = None  # release the model before the next config
    gc.collect()
    return {"device": str(device), "iters": args.iters, "tasks": tasks}


def _profile_table(r: Dict) -> str:
    from tabulate import tabulate

    out = [f"{r['config']} on {r['device']}: {r['iters']} steps per pass, mean ms per step of each task's batches"]
    names = ["total", "forward", "backward", "optimizer", "other"]
    out.append(tabulate([(t, x["steps"], *(f"{x['ms'][k]:.1f}" if k in x["ms"] else "" for k in names),
                          f"{x['gflop']:.2f}" if "gflop" in x else "", f"{x['gflop_per_s']:.0f}" if "gflop_per_s" in x else "")
                         for t, x in r["tasks"].items()],
                        headers=["task", "steps", *names, "GFLOP / step", "GFLOP/s"], tablefmt="pipe"))
    for t, x in r["tasks"].items():
        if not x["ops"]:
            continue
        out.append(f"### {t}: top operators (self ms / step, calls / step; under torch.profiler)")
        out.append(tabulate([(n, f"{ms:.2f}", f"{c:.0f}") for n, ms, c in x["ops"]], headers=["operator", "ms", "calls"],
                            tablefmt="pipe"))
        for key, what in (("frames_self", "Python frames by self time"), ("frames_project", "pixelllm_d2 frames by cumulative time")):
            if x.get(key):
                out.append(f"### {t}: {what} (ms / step, under cProfile)")
                out.append(tabulate([(n, f"{ms:.2f}") for n, ms in x[key]], headers=["frame", "ms"], tablefmt="pipe"))
    return "\n\n".join(out)


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


def compare_densecap_decode(model, x: Dict, boxes: torch.Tensor, dec: Dict, warmup: int, iters: int) -> Dict:
    """Caption `boxes` (K, 4) of the prepared input `x` both ways with `model`'s weights: ours (one batched greedy
    decode with the KV cache, per-word locations read while decoding) and the official scheme (the prefix
    recomputed at every step, then the language model re-run teacher-forced for the locations). The visual tokens
    of the regions are computed once and shared.

    Returns:
        dict with regions, ours_s, official_s, official_decode_s, speedup, mean_tokens, identical.
    """
    import torch.nn.functional as F
    from torch.nn.utils.rnn import pad_sequence

    device = model.device
    h, w = x["image"].shape[-2:]
    from pixelllm_d2.modeling.precision import eval_autocast

    with torch.no_grad(), eval_autocast(model):
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
            hidden, _, _ = model.language.decode(enc_h, enc_m, model.decoder_inputs(F.pad(target, (0, 1), value=model.tokenizer.pad_id)))
            model.location_head.locate(hidden, wh, features.fused, index)
            return outs

        ours_s, a = _median_time(ours, device, warmup, iters)
        official_decode_s, _ = _median_time(official_decode, device, warmup, iters)
        official_s, b = _median_time(official, device, warmup, iters)
    identical = all(torch.equal(p["token_ids"], q["token_ids"]) for p, q in zip(a, b))
    return {
        "regions": int(len(boxes)),
        "mean_tokens": float(sum(len(o["token_ids"]) for o in a) / max(len(a), 1)),
        "ours_s": ours_s,
        "official_s": official_s,
        "official_decode_s": official_decode_s,
        "speedup": official_s / ours_s,
        "identical": bool(identical),
    }


@register_task("densecap")
def benchmark_densecap(cfg, args, trainer_cls=DefaultTrainer) -> Dict:
    """Captioning `args.regions` regions of one image: KV-cached batched decoding vs the official scheme
    (`compare_densecap_decode`), `args.iters` times each after `args.warmup` untimed runs, median wall times.

    Returns:
        dict with regions, ours_s, official_s, official_decode_s (the recomputing decode without the teacher-forced
        re-run), speedup (official_s / ours_s), mean_tokens (per region), identical, device, image_size.
    """
    from pixelllm_d2.predictor import PixelLLMPredictor

    seed = cfg.SEED if cfg.SEED >= 0 else 0
    seed_all_rng(seed)
    predictor = PixelLLMPredictor(cfg)
    model = predictor.model
    x = predictor.prepare(args.input or _shapes_scene(), task="densecap")  # the image alone, resized
    h, w = x["image"].shape[-2:]
    boxes = _region_boxes(args.regions or 100, h, w, seed).to(model.device)
    result = compare_densecap_decode(model, x, boxes, dict(model.decode_cfg, method="greedy"), args.warmup, args.iters)
    return {**result, "device": str(model.device), "image_size": [int(h), int(w)]}


# --task paper: what the benchmark adds to the config (overrides on the command line win). MASK_ON and DENSECAP_ON
# give one model every task. Frozen weights are held in bf16 (MODEL.PIXELLLM.FROZEN_DTYPE). The compute follows the
# machine: where bf16 matmuls are faster than fp32 (GPUs, CPUs with AMX / AVX512-BF16), bf16 autocast; elsewhere
# (e.g. AVX2-only CPUs, whose bf16 matmul has no hardware path) float32, with activation checkpointing of the EVA02,
# prompt-extractor and T5 blocks to fit 24 GiB.
PAPER_OPTS = ["MODEL.MASK_ON", True, "MODEL.DENSECAP_ON", True]
PAPER_PRECISION = {
    "bfloat16": ["MODEL.PIXELLLM.FROZEN_DTYPE", "bfloat16", "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", "bfloat16",
                 "TEST.AMP.ENABLED", True, "TEST.AMP.DTYPE", "bfloat16"],
    "float32": ["MODEL.PIXELLLM.FROZEN_DTYPE", "bfloat16", "SOLVER.AMP.ENABLED", False, "TEST.AMP.ENABLED", False,
                "MODEL.PIXELLLM.EVA02.GRAD_CHECKPOINTING", True, "MODEL.PIXELLLM.LANGUAGE.GRAD_CHECKPOINTING", True,
                "MODEL.PIXELLLM.PROMPT_EXTRACTOR.GRAD_CHECKPOINTING", True],
}
# Text lengths of the synthetic batches (tokens, EOS included): a Localized Narrative (~40 words), a referring
# expression, a Visual Genome region caption (~5 words); the refer context is the prompt + the expression.
PAPER_LENGTHS = dict(trace=64, trace_context=8, refer=12, refer_context=20, refer_expressions=4, densecap=8,
                     densecap_regions=32, caption_decode=64, region_decode=8, densecap_decode=8)


def _paper_image(size: int) -> torch.Tensor:
    """(3, size, size) uint8: scikit-image's astronaut photograph (public domain) resized, or a shapes scene."""
    import numpy as np

    try:
        from skimage import data

        img = data.astronaut()
    except ImportError:
        img = _shapes_scene()
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True)[0].round().clamp(0, 255).to(torch.uint8)


def paper_batches(image: torch.Tensor, model, seed: int = 0) -> Dict[str, Dict]:
    """One input per benchmark row, in the model-input format (docs/DESIGN.md §2), on `image` (3, S, S): random
    token ids of `PAPER_LENGTHS` from `model`'s vocabulary, EOS-terminated, random boxes and masks, fixed by `seed`;
    the inference inputs carry `model`'s context prompts."""
    tok, vocab = model.tokenizer, model.language.vocab_size
    g = torch.Generator().manual_seed(seed)
    s = image.shape[-1]
    top = min(vocab, len(tok))

    def ids(n, length):
        t = torch.randint(3, top, (n, length), generator=g)
        t[:, -1] = tok.eos_id
        return t

    def boxes(n):
        return _region_boxes(n, s, s, int(torch.randint(0, 2**31, (1,), generator=g)))

    whole = torch.tensor([[0.0, 0.0, s, s]])
    L = PAPER_LENGTHS
    base = dict(image=image, height=s, width=s)
    n_ref = L["refer_expressions"]
    ref_boxes = boxes(n_ref)
    masks = torch.zeros(n_ref, s, s, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(ref_boxes.round().long().tolist()):
        masks[k, y0:y1, x0:x1] = True
    refer = dict(base, task="refer", prompt_boxes=whole.repeat(n_ref, 1), context_ids=ids(n_ref, L["refer_context"]),
                 target_ids=ids(n_ref, L["refer"]), ref_boxes=ref_boxes, gt_masks=masks)
    return {
        "trace": dict(base, task="trace", prompt_boxes=whole, context_ids=ids(1, L["trace_context"]),
                      target_ids=ids(1, L["trace"]), token_boxes=boxes(L["trace"])[None]),
        "refer+mask": refer,
        "densecap": dict(base, task="densecap", gt_boxes=boxes(L["densecap_regions"]),
                         gt_target_ids=ids(L["densecap_regions"], L["densecap"])),
        "infer/caption+trace": dict(base, task="caption", prompt_boxes=whole, context_ids=model.context_ids("caption", 1).cpu()),
        "infer/region": dict(base, task="region", prompt_boxes=boxes(1), context_ids=model.context_ids("region", 1).cpu()),
        "infer/refer+mask": {k: (v[:1] if k in ("prompt_boxes", "context_ids", "target_ids", "ref_boxes", "gt_masks") else v)
                             for k, v in refer.items()},
        "infer/densecap": dict(base, task="densecap"),
    }


def _gib(device) -> float:
    return peak_memory_mib(device)[1] / 1024


@register_task("paper")
def benchmark_paper(cfg, args, trainer_cls=DefaultTrainer) -> Dict:
    """The paper-scale model with random weights (nothing is downloaded), batch 1 at INPUT.IMAGE_SIZE: one optimizer
    step each for a trace, a refer+mask and a dense-caption batch, one inference each for caption+trace, region,
    refer+mask and densecap (each run once, timed while `utils.flops.count_flops` counts its FLOPs with
    torch.utils.flop_counter's formulas: at this scale one run is minutes and the per-operator cost is negligible), dense-caption decoding of `--regions` proposals both
    ways, and the attention kernels' effect on the refer+mask inference.

    Returns:
        dict with machine_peak_flops {float32, bfloat16}, model {...}, rows [{phase, task, wall_s, flops,
        achieved_flops_per_s, mfu, peak_rss_gib, ...}], densecap_decode {...}, attention {...}.
    """
    from itertools import repeat

    from pixelllm_d2.engine.train_loop import AMPTrainer, SimpleTrainer
    from pixelllm_d2.modeling import build_model
    from pixelllm_d2.modeling.attention import attention_paths, set_attention
    from pixelllm_d2.utils.flops import count_flops, matmul_peak_flops

    log = logging.getLogger("pixelllm_d2")
    device = resolve_device(cfg.MODEL.DEVICE)
    peaks = {name: matmul_peak_flops(dt, device) for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    log.info("matmul peak: fp32 %.1f GFLOP/s, bf16 %.1f GFLOP/s", peaks["float32"] / 1e9, peaks["bfloat16"] / 1e9)
    precision = "bfloat16" if peaks["bfloat16"] > peaks["float32"] else "float32"
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(PAPER_OPTS + PAPER_PRECISION[precision] + list(args.opts or []))
    lang = cfg.MODEL.PIXELLLM.LANGUAGE
    if not (lang.TOKENIZER or lang.WEIGHTS):
        lang.TOKENIZER = "byt5"  # ids only: the batches hold random ids of the model's vocabulary
    cfg.freeze()
    compute = "bfloat16" if cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.DTYPE == "bfloat16" else "float32"

    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else 0)
    reset_peak_memory(device)
    start = time.perf_counter()
    model = build_model(cfg)
    build_s = time.perf_counter() - start
    params = list(model.parameters())
    info = {
        "parameters": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "frozen_dtype": cfg.MODEL.PIXELLLM.FROZEN_DTYPE,
        "compute_dtype": compute,
        "build_s": build_s,
        "build_peak_rss_gib": _gib(device),
        "attention": attention_paths(model),
        "grad_checkpointing": {"eva02": cfg.MODEL.PIXELLLM.EVA02.GRAD_CHECKPOINTING,
                               "prompt_extractor": cfg.MODEL.PIXELLLM.PROMPT_EXTRACTOR.GRAD_CHECKPOINTING,
                               "language": cfg.MODEL.PIXELLLM.LANGUAGE.GRAD_CHECKPOINTING},
    }
    log.info("built in %.0f s: %s", build_s, info)
    optimizer = trainer_cls.build_optimizer(cfg, model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    info["optimizer_frozen_params"] = sum(p.numel() for p in params if not p.requires_grad and id(p) in in_optimizer)
    batches = paper_batches(_paper_image(cfg.INPUT.IMAGE_SIZE), model)
    rows = []

    def row(phase, task, fn, **extra):
        reset_peak_memory(device)
        _sync(device)
        t0 = time.perf_counter()
        _, flops = count_flops(fn)
        _sync(device)
        wall = time.perf_counter() - t0
        r = {"phase": phase, "task": task, "wall_s": wall, "flops": flops, "achieved_flops_per_s": flops / wall,
             "mfu": flops / wall / peaks[compute], "mfu_of": compute, "peak_rss_gib": _gib(device), **extra}
        log.info("%s %s: %.1f s, %.2f TFLOP, MFU %.3f, peak RSS %.1f GiB", phase, task, wall, flops / 1e12, r["mfu"], r["peak_rss_gib"])
        rows.append(r)

    amp = dict(precision=getattr(torch, cfg.SOLVER.AMP.DTYPE), device_type=device.type) if cfg.SOLVER.AMP.ENABLED else None
    for task in ("trace", "refer+mask", "densecap"):
        loader = repeat([batches[task]])
        trainer = AMPTrainer(model, loader, optimizer, **amp) if amp else SimpleTrainer(model, loader, optimizer)
        with EventStorage(0):
            trainer.before_train()
            row("train", task, trainer.run_step)
    model.eval()
    L = PAPER_LENGTHS
    decode_len = {"caption+trace": L["caption_decode"], "region": L["region_decode"], "densecap": L["densecap_decode"]}
    for task in ("caption+trace", "region", "refer+mask", "densecap"):
        x = batches["infer/" + task]
        opts = {"max_len": decode_len[task]} if task in decode_len else None
        out = {}

        def infer(x=x, opts=opts):
            out["result"] = model.inference([x], decode=opts)

        row("infer", task, infer)
        rows[-1]["captions"] = len(out["result"][0].get("captions", []))
    # dense-caption decoding of proposals: KV cache vs the official recompute scheme
    s = cfg.INPUT.IMAGE_SIZE
    boxes = _region_boxes(args.regions or 32, s, s, 0).to(device)
    densecap = compare_densecap_decode(model, batches["infer/densecap"], boxes,
                                       dict(model.decode_cfg, method="greedy", max_len=L["densecap_decode"]), 0, 1)
    # attention kernels: the refer+mask inference with every part eager, then SDPA again
    attention = {"paths": attention_paths(model)}
    for impl in ("eager", cfg.MODEL.PIXELLLM.ATTENTION):
        set_attention(model, impl)
        attention[f"{impl}_s"], _ = _median_time(lambda: model.inference([batches["infer/refer+mask"]]), device, 1, 1)
    return {"machine_peak_flops": peaks, "model": info, "rows": rows, "densecap_decode": densecap,
            "attention": attention, "device": str(device), "image_size": s}


def _paper_table(r: Dict) -> str:
    from tabulate import tabulate

    peaks, m, d, a = r["machine_peak_flops"], r["model"], r["densecap_decode"], r["attention"]
    head = (f"{r['config']} on {r['device']} at {r['image_size']} px: {m['parameters'] / 1e9:.2f}B parameters "
            f"({m['trainable'] / 1e6:.0f}M trainable), frozen weights {m['frozen_dtype']}, compute {m['compute_dtype']}; "
            f"built in {m['build_s']:.0f} s (peak RSS {m['build_peak_rss_gib']:.1f} GiB). Matmul peak: "
            f"fp32 {peaks['float32'] / 1e9:.0f}, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s.")
    table = tabulate(
        [(x["phase"], x["task"], f"{x['wall_s']:.2f}", f"{x['flops'] / 1e12:.3f}", f"{x['achieved_flops_per_s'] / 1e9:.1f}",
          f"{x['mfu']:.3f}", f"{x['peak_rss_gib']:.1f}") for x in r["rows"]],
        headers=["phase", "task", "wall s", "TFLOP", "GFLOP/s", "MFU", "peak RSS GiB"], tablefmt="pipe",
    )
    tail = (f"Dense-caption decoding, {d['regions']} regions x {d['mean_tokens']:.1f} tokens: ours {d['ours_s']:.2f} s, "
            f"official scheme {d['official_s']:.2f} s ({d['speedup']:.1f}x), same tokens: {d['identical']}.\n"
            f"Attention {a['paths']}: refer+mask inference " +
            ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in a.items() if k.endswith("_s")))
    return "\n\n".join([head, table, tail])


def format_table(rows: List[Dict]) -> str:
    from tabulate import tabulate

    if rows and rows[0]["task"] == "paper":
        return "\n\n".join(_paper_table(r) for r in rows)
    if rows and rows[0]["task"] == "profile":
        return "\n\n".join(_profile_table(r) for r in rows)
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
    parser.add_argument("--top", type=int, default=12, help="profile: operators and frames listed per task")
    parser.add_argument("--regions", type=int, default=0,
                        help="densecap / paper: regions captioned in one batch (default 100 / 32)")
    parser.add_argument("--input", default="", help="densecap: the image (default: a generated shapes scene)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (one per GPU; CPU processes without CUDA)")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every config")
    return parser


if __name__ == "__main__":
    from pixelllm_d2.utils.cli import quiet_dependency_warnings, run_tool

    args = argument_parser().parse_args()
    quiet_dependency_warnings()
    run_tool(lambda a: launch_with_args(run, a), args, "benchmark.py")
