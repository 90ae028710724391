"""A tiny model, data loader and evaluator that follow the contracts the engine relies on (docs/DESIGN.md and
the engine's `DefaultTrainer` classmethods), for engine tests only.

- `EngineToyNet` (META_ARCH_REGISTRY, test-only name) has the submodule names of PixelLLM the optimizer rules
  look for: `backbone.eva02` (patch_embed, pos_embed, cls_token, blocks.{i}, norm), a frozen `backbone.sam`,
  `language` with `lora_` parameters, `mask_head.adapter`, `location_head`. Training: dict of scalar losses;
  eval: list of dicts. Dropout (cfg.MODEL.PIXELLLM.LANGUAGE.DROPOUT) makes the RNG state matter for resume.
- `ToyLoader`: global batch k is a function of (seed, k); rank r of W gets its slice; `num_skipped` counts
  samples flagged corrupt (as the real loader counts replaced samples).
- `ToyTrainer`: DefaultTrainer with the loaders, evaluator and inference loop above.
- `toy_cfg`: a config of it on CPU; `run_toy`: seed, build, load / resume and train in this process.
"""
import json
import os
from typing import Dict, List, Optional

import torch
from torch import nn

from pixelllm_d2.config import get_cfg
from pixelllm_d2.engine import DefaultTrainer
from pixelllm_d2.modeling import META_ARCH_REGISTRY
from pixelllm_d2.utils import comm
from pixelllm_d2.utils.env import seed_all_rng
from pixelllm_d2.utils.events import CommonMetricPrinter, JSONWriter

IMAGE_SHAPE = (3, 4, 4)
DIM = 8
DEPTH = 3


class _ToyBlock(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.fc = nn.Linear(DIM, DIM)
        self.q_bias = nn.Parameter(torch.zeros(DIM))  # like timm EVA's attention biases
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return x + self.drop(torch.tanh(self.fc(self.norm(x)) + self.q_bias))


class _ToyEva(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Linear(3 * 16, DIM)
        self.pos_embed = nn.Parameter(torch.zeros(DIM))
        self.cls_token = nn.Parameter(torch.zeros(DIM))
        self.blocks = nn.ModuleList(_ToyBlock(dropout) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x):
        x = self.patch_embed.proj(x) + self.pos_embed + self.cls_token
        for b in self.blocks:
            x = b(x)
        return self.norm(x)


class _ToyLoRA(nn.Module):
    def __init__(self):
        super().__init__()
        self.base = nn.Linear(DIM, DIM)
        self.lora_A = nn.Linear(DIM, 2, bias=False)
        self.lora_B = nn.Linear(2, DIM, bias=False)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x))


@META_ARCH_REGISTRY.register()
class EngineToyNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.eva02 = _ToyEva(cfg.MODEL.PIXELLLM.LANGUAGE.DROPOUT)
        self.backbone.sam = nn.Linear(3 * 16, DIM)
        self.backbone.sam.requires_grad_(False)
        self.language = _ToyLoRA()
        self.language.base.requires_grad_(False)
        self.mask_head = nn.Module()
        self.mask_head.adapter = nn.Linear(DIM, DIM)
        self.location_head = nn.Linear(DIM, 2)
        # A randomly initialised buffer, like SAM's Fourier position-encoding matrix: processes seeded differently
        # hold different values until the engine syncs them.
        self.register_buffer("fourier", torch.randn(DIM))

    def load_component_weights(self) -> None:
        # Stands in for a pretrained frozen encoder: fixed weights, independent of the global seed.
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            self.backbone.sam.weight.copy_(torch.randn(self.backbone.sam.weight.shape, generator=g) * 0.1)
            self.backbone.sam.bias.zero_()

    def forward(self, batched_inputs: List[Dict]):
        device = self.location_head.weight.device
        x = torch.stack([d["image"] for d in batched_inputs]).to(device).float().flatten(1) / 255.0
        feats = self.backbone.eva02(x) + self.backbone.sam(x) + 0.1 * torch.sin(self.fourier)
        pred = self.location_head(self.mask_head.adapter(feats) + self.language(feats))
        if not self.training:
            return [{"pred": p} for p in pred]
        target = torch.stack([d["target"] for d in batched_inputs]).to(device)
        return {"loss_l1": (pred - target).abs().mean(), "loss_mse": 0.5 * (pred - target).square().mean()}


def _target_weights() -> torch.Tensor:
    return torch.randn(3 * 16, 2, generator=torch.Generator().manual_seed(7))


class ToyLoader:
    """Infinite batches from `start_iter`; global batch k depends on (seed, k) only.

    Args:
        ims_per_batch: global batch size (divisible by the world size).
        nan_at: global batch index whose first target is NaN (a NaN loss), or None.
    """

    def __init__(self, ims_per_batch: int, seed: int, start_iter: int = 0, nan_at: Optional[int] = None):
        world = comm.get_world_size()
        if ims_per_batch % world:
            raise ValueError(f"IMS_PER_BATCH={ims_per_batch} is not divisible by {world} processes")
        self.ims_per_batch, self.seed, self.start_iter, self.nan_at = ims_per_batch, seed, start_iter, nan_at
        self.num_skipped = 0
        self._w = _target_weights()

    def global_batch(self, k: int) -> List[Dict]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        images = torch.randint(0, 256, (self.ims_per_batch, *IMAGE_SHAPE), dtype=torch.uint8, generator=g)
        targets = images.float().flatten(1) / 255.0 @ self._w
        if self.nan_at == k:
            targets[0, 0] = float("nan")
        task = "refer" if k % 3 == 0 else "caption"
        return [
            {"image": images[i], "target": targets[i], "task": task, "image_id": k * self.ims_per_batch + i}
            for i in range(self.ims_per_batch)
        ]

    def __iter__(self):
        world, rank = comm.get_world_size(), comm.get_rank()
        per = self.ims_per_batch // world
        k = self.start_iter
        while True:
            batch = self.global_batch(k)[rank * per : (rank + 1) * per]
            # Every 5th image of the stream counts as corrupt and replaced.
            self.num_skipped += sum(1 for d in batch if d["image_id"] % 5 == 0)
            yield batch
            k += 1


class ToyEvaluator:
    """Mean L1 of predictions vs the targets; writes `results.json` to its output folder (main process)."""

    def __init__(self, output_folder: str):
        self.output_folder = output_folder
        self.errors: List[float] = []

    def reset(self) -> None:
        self.errors = []

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for i, o in zip(inputs, outputs):
            self.errors.append((o["pred"].cpu() - i["target"]).abs().mean().item())

    def evaluate(self) -> Dict[str, float]:
        errors = [e for part in comm.all_gather(self.errors) for e in part]
        results = {"L1": sum(errors) / len(errors), "num_images": len(errors)}
        if comm.is_main_process():
            os.makedirs(self.output_folder, exist_ok=True)
            with open(os.path.join(self.output_folder, "results.json"), "w") as f:
                json.dump(results, f)
        return results


class ToyTrainer(DefaultTrainer):
    """DefaultTrainer on the toy model and data. Its metrics.json holds raw per-iteration values (window 1) and
    it skips TensorBoard (slow to import in every subprocess); `DefaultTrainer.build_writers` is tested apart."""

    nan_at: Optional[int] = None

    @classmethod
    def preflight(cls, cfg, train=True, resume=False, overwrite=False):
        from pixelllm_d2.engine.preflight import preflight

        preflight(cfg, train, resume, overwrite, check_datasets=False)  # its data is not in the catalog

    def build_writers(self):
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), window_size=1),
        ]

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0, seed: Optional[int] = None):
        return ToyLoader(cfg.SOLVER.IMS_PER_BATCH, seed, start_iter, nan_at=cls.nan_at)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        loader = ToyLoader(2, seed=99)
        return [loader.global_batch(k) for k in range(2)]

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str):
        return ToyEvaluator(output_folder)

    @classmethod
    def inference_on_dataset(cls, model, data_loader, evaluator):
        evaluator.reset()
        model.eval()
        with torch.no_grad():
            for batch in data_loader:
                evaluator.process(batch, model(batch))
        return evaluator.evaluate()


def toy_cfg(output_dir: str, **overrides):
    """A config for `EngineToyNet` on CPU; `overrides` are KEY=VALUE with "__" for "." (SOLVER__MAX_ITER=5)."""
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.META_ARCHITECTURE", "EngineToyNet",
            "MODEL.DEVICE", "cpu",
            "MODEL.PIXELLLM.LANGUAGE.DROPOUT", 0.2,
            "SOLVER.IMS_PER_BATCH", 4,
            "SOLVER.BASE_LR", 0.02,
            "SOLVER.MAX_ITER", 12,
            "SOLVER.WARMUP_ITERS", 3,
            "SOLVER.WEIGHT_DECAY", 0.01,
            "SOLVER.CHECKPOINT_PERIOD", 4,
            "SOLVER.LOG_PERIOD", 1,
            "SEED", 3,
            "OUTPUT_DIR", output_dir,
        ]
    )
    for k, v in overrides.items():
        cfg.merge_from_list([k.replace("__", "."), v])
    return cfg


def run_toy(cfg, trainer_cls=ToyTrainer, resume: bool = False):
    """Seed as `default_setup` does, build the trainer, load / resume, train.

    Returns:
        (trainer, the final evaluation results or None)
    """
    seed_all_rng(cfg.SEED)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer, trainer.train()
