"""Optimizer parameter groups (trainable parameters only; weight decay per kind; layer-wise LR decay for EVA02;
regex LR multipliers), AdamW, and gradient clipping."""
import logging
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["get_param_groups", "find_eva02", "eva02_lr_scale", "build_optimizer", "build_grad_clipper"]

logger = logging.getLogger(__name__)

# Where the model keeps its EVA02 encoder: the timm `Eva` (patch_embed, pos_embed, cls_token, blocks.{i}, norm)
# is this module or one inside it (e.g. `backbone.eva02.model`).
EVA02_MODULE = "backbone.eva02"

_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
# Norms defined outside torch (HF T5LayerNorm, SAM/timm LayerNorm2d, FrozenBatchNorm2d, ...).
_NORM_NAME = re.compile(r"(Layer|Group|Batch|Instance|RMS)Norm(\d+d)?$")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def find_eva02(model: nn.Module) -> Tuple[Optional[str], int]:
    """The parameter-name prefix of the model's timm EVA02 trunk (the module at or under `backbone.eva02` with
    `patch_embed` and a `blocks` list) and its number of blocks; (None, 0) if there is none."""
    for name, m in model.named_modules():
        if name == EVA02_MODULE or name.startswith(EVA02_MODULE + "."):
            if hasattr(m, "patch_embed") and isinstance(getattr(m, "blocks", None), nn.ModuleList):
                return name + ".", len(m.blocks)
    return None, 0


def eva02_lr_scale(name: str, num_blocks: int, decay: float, prefix: str = EVA02_MODULE + ".") -> float:
    """Layer-wise LR decay of the official recipe (BEiT's rule): with L = `num_blocks`, the embeddings
    (patch_embed, pos_embed, cls/reg tokens) are layer 0 and get decay^(L+1); block i is layer i+1 and gets
    decay^(L-i); every other parameter (EVA02's final norm, and the rest of the model) gets 1.

    Args:
        name: a parameter's full name in the model.
        num_blocks: L, the number of EVA02 blocks.
        decay: the per-layer factor (SOLVER.EVA02_LAYER_DECAY; 1.0 disables).
        prefix: the name prefix of the EVA02 trunk (see `find_eva02`).
    Returns:
        the LR multiplier of that parameter.
    """
    if decay == 1.0 or not name.startswith(prefix):
        return 1.0
    rest = name[len(prefix) :]
    if rest.startswith(("patch_embed.", "pos_embed", "cls_token", "reg_token")):
        layer = 0
    elif rest.startswith("blocks."):
        layer = int(rest.split(".")[1]) + 1
    else:
        layer = num_blocks + 1
    return decay ** (num_blocks + 1 - layer)


def get_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    weight_decay_bias: float = 0.0,
    eva02_layer_decay: float = 1.0,
    lr_multipliers: Sequence[Tuple[str, float]] = (),
) -> List[Dict]:
    """Parameter groups of the trainable (`requires_grad`) parameters, each shared parameter once.

    Args:
        model: the (unwrapped) model.
        base_lr: SOLVER.BASE_LR.
        weight_decay: for weights that are neither norm parameters nor biases.
        weight_decay_norm: for the parameters of normalization layers.
        weight_decay_bias: for other parameters whose name ends in `bias` (also EVA02's `q_bias`, `v_bias`).
            With both at 0 this is the official rule (no decay on 1-D parameters) for PixelLLM's modules.
        eva02_layer_decay: see `eva02_lr_scale` (the trunk is found by `find_eva02`).
        lr_multipliers: (regex, multiplier) pairs; every rule whose regex `re.search`es a parameter's name
            multiplies its LR (rules compose with each other and with the layer decay).
    Returns:
        list of dicts with `params`, `lr` (base_lr x multiplier), `lr_mult` and `weight_decay`; parameters with
        the same (multiplier, weight decay) share a group, groups in order of first appearance.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    rules = [(re.compile(rx), float(m)) for rx, m in lr_multipliers]
    eva_prefix, num_blocks = find_eva02(model)
    if eva02_layer_decay != 1.0 and eva_prefix is None:
        raise ValueError(
            f"SOLVER.EVA02_LAYER_DECAY={eva02_layer_decay}, but the model has no EVA02 trunk at {EVA02_MODULE}"
        )

    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    seen = set()
    for module_name, module in model.named_modules():
        norm = _is_norm(module)
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{module_name}.{pname}" if module_name else pname
            wd = weight_decay_norm if norm else weight_decay_bias if pname.endswith("bias") else weight_decay
            mult = eva02_lr_scale(name, num_blocks, eva02_layer_decay, eva_prefix) if eva_prefix else 1.0
            for rx, m in rules:
                if rx.search(name):
                    mult *= m
            groups.setdefault((mult, wd), []).append(p)
    return [
        {"params": ps, "lr": base_lr * mult, "lr_mult": mult, "weight_decay": wd} for (mult, wd), ps in groups.items()
    ]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (cfg.SOLVER.OPTIMIZER) over `get_param_groups` built from cfg.SOLVER."""
    s = cfg.SOLVER
    if s.OPTIMIZER != "AdamW":
        raise ValueError(f"SOLVER.OPTIMIZER={s.OPTIMIZER!r} is not supported; use AdamW")
    for rule in s.LR_MULTIPLIERS:
        if len(rule) != 2:
            raise ValueError(f"SOLVER.LR_MULTIPLIERS entries are [regex, multiplier], got {rule!r}")
    groups = get_param_groups(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        weight_decay_bias=s.WEIGHT_DECAY_BIAS,
        eva02_layer_decay=s.EVA02_LAYER_DECAY,
        lr_multipliers=[tuple(r) for r in s.LR_MULTIPLIERS],
    )
    if not groups:
        raise ValueError("The model has no trainable parameters (every parameter has requires_grad=False)")
    n_train = sum(p.numel() for g in groups for p in g["params"])
    n_all = sum(p.numel() for p in model.parameters())
    logger.info(
        "Optimizer: AdamW over %d trainable parameters (%d frozen) in %d groups", n_train, n_all - n_train, len(groups)
    )
    return torch.optim.AdamW(groups, lr=s.BASE_LR, betas=tuple(s.BETAS), eps=s.EPS, weight_decay=s.WEIGHT_DECAY,
                             **optimizer_impl(s.OPTIMIZER_IMPL))


_IMPLS = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False, fused=False)}


def optimizer_impl(name: str) -> Dict[str, bool]:
    """The torch.optim keyword arguments of SOLVER.OPTIMIZER_IMPL."""
    if name not in _IMPLS:
        raise ValueError(f"SOLVER.OPTIMIZER_IMPL must be one of {sorted(_IMPLS)}, got {name!r}")
    return dict(_IMPLS[name])


def build_grad_clipper(cfg) -> Optional[Callable[[List[nn.Parameter]], None]]:
    """Gradient clipping from cfg.SOLVER.CLIP_GRADIENTS: "norm" clips the total norm of all trainable gradients
    to CLIP_VALUE (NORM_TYPE-norm), "value" clamps each gradient element to [-CLIP_VALUE, CLIP_VALUE]; None when
    disabled."""
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return None
    if c.CLIP_TYPE == "norm":
        return lambda params: nn.utils.clip_grad_norm_(params, c.CLIP_VALUE, c.NORM_TYPE)
    if c.CLIP_TYPE == "value":
        return lambda params: nn.utils.clip_grad_value_(params, c.CLIP_VALUE)
    raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'norm' or 'value', got {c.CLIP_TYPE!r}")
