import pytest
import torch
from engine_toy import EngineToyNet, toy_cfg

from pixelllm_d2.engine import build_grad_clipper, build_optimizer
from pixelllm_d2.engine.optimizer import eva02_lr_scale


@pytest.mark.parametrize(
    "name,expected",
    [
        ("backbone.eva02.patch_embed.proj.weight", 0.5**4),
        ("backbone.eva02.pos_embed", 0.5**4),
        ("backbone.eva02.cls_token", 0.5**4),
        ("backbone.eva02.blocks.0.fc.weight", 0.5**3),
        ("backbone.eva02.blocks.2.norm.bias", 0.5**1),
        ("backbone.eva02.norm.weight", 1.0),
        ("language.lora_A.weight", 1.0),
        ("backbone.sam.pos_embed", 1.0),
    ],
)
def test_eva02_lr_scale(name, expected):
    assert eva02_lr_scale(name, num_blocks=3, decay=0.5) == pytest.approx(expected)


def test_eva02_lr_scale_24_blocks_official_values():
    # EVA02-L with decay 0.8 (scenic: 25 layers = 24 blocks + the stem; scale 0.8^(25 - layer id)).
    assert eva02_lr_scale("backbone.eva02.blocks.23.attn.qkv.weight", 24, 0.8) == pytest.approx(0.8)
    assert eva02_lr_scale("backbone.eva02.blocks.0.attn.qkv.weight", 24, 0.8) == pytest.approx(0.8**24)
    assert eva02_lr_scale("backbone.eva02.patch_embed.proj.weight", 24, 0.8) == pytest.approx(0.8**25)


@pytest.mark.parametrize("nested", [False, True])
def test_layer_decay_finds_the_eva02_trunk(tmp_path, nested):
    cfg = toy_cfg(str(tmp_path), SOLVER__EVA02_LAYER_DECAY=0.5)
    model = EngineToyNet(cfg)
    if nested:  # the real backbone keeps timm's Eva at backbone.eva02.model
        trunk = model.backbone.eva02
        model.backbone.eva02 = torch.nn.Module()
        model.backbone.eva02.model = trunk
    prefix = "backbone.eva02.model." if nested else "backbone.eva02."
    groups = _groups_by_name(model, build_optimizer(cfg, model))
    assert groups[prefix + "pos_embed"]["lr_mult"] == pytest.approx(0.5**4)
    assert groups[prefix + "blocks.1.fc.weight"]["lr_mult"] == pytest.approx(0.5**2)
    assert groups["location_head.weight"]["lr_mult"] == 1.0


def test_layer_decay_without_eva02_is_an_error(tmp_path):
    cfg = toy_cfg(str(tmp_path), SOLVER__EVA02_LAYER_DECAY=0.8)
    model = EngineToyNet(cfg)
    del model.backbone.eva02
    with pytest.raises(ValueError, match="no EVA02 trunk at backbone.eva02"):
        build_optimizer(cfg, model)


def _groups_by_name(model, optimizer):
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return {n: where.get(id(p)) for n, p in model.named_parameters()}


def test_param_groups(tmp_path):
    cfg = toy_cfg(str(tmp_path), SOLVER__EVA02_LAYER_DECAY=0.5, SOLVER__LR_MULTIPLIERS=[[r"mask_head\.adapter", 10.0]])
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    model = EngineToyNet(cfg)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    groups = _groups_by_name(model, opt)
    base = cfg.SOLVER.BASE_LR

    # Frozen parameters are not in the optimizer.
    for n in ("backbone.sam.weight", "backbone.sam.bias", "language.base.weight", "language.base.bias"):
        assert groups[n] is None, n
    expected = {  # name: (lr multiplier, weight decay)
        "backbone.eva02.patch_embed.proj.weight": (0.5**4, 0.05),
        "backbone.eva02.patch_embed.proj.bias": (0.5**4, 0.0),
        "backbone.eva02.pos_embed": (0.5**4, 0.05),
        "backbone.eva02.blocks.0.fc.weight": (0.5**3, 0.05),
        "backbone.eva02.blocks.0.norm.weight": (0.5**3, 0.0),
        "backbone.eva02.blocks.1.norm.bias": (0.5**2, 0.0),
        "backbone.eva02.blocks.2.fc.bias": (0.5, 0.0),
        "backbone.eva02.blocks.2.q_bias": (0.5, 0.0),
        "backbone.eva02.norm.weight": (1.0, 0.0),
        "language.lora_A.weight": (1.0, 0.05),
        "language.lora_B.weight": (1.0, 0.05),
        "mask_head.adapter.weight": (10.0, 0.05),
        "mask_head.adapter.bias": (10.0, 0.0),
        "location_head.weight": (1.0, 0.05),
    }
    for n, (mult, wd) in expected.items():
        g = groups[n]
        assert g["lr"] == pytest.approx(base * mult), n
        assert g["lr_mult"] == pytest.approx(mult), n
        assert g["weight_decay"] == wd, n
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == sum(1 for p in model.parameters() if p.requires_grad)


def test_param_groups_shared_parameter_once(tmp_path):
    cfg = toy_cfg(str(tmp_path))
    model = EngineToyNet(cfg)
    model.extra = torch.nn.Linear(8, 8)
    model.extra.weight = model.mask_head.adapter.weight  # tied
    opt = build_optimizer(cfg, model)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))


def test_betas_eps_and_errors(tmp_path):
    cfg = toy_cfg(str(tmp_path), SOLVER__BETAS=[0.8, 0.9], SOLVER__EPS=1e-6)
    model = EngineToyNet(cfg)
    opt = build_optimizer(cfg, model)
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1e-6
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(cfg, model)
    cfg.SOLVER.OPTIMIZER = "SGD"
    with pytest.raises(ValueError, match="SGD"):
        build_optimizer(cfg, EngineToyNet(cfg))


@pytest.mark.parametrize("clip_type,value", [("norm", 0.5), ("value", 0.01)])
def test_grad_clipping(tmp_path, clip_type, value):
    cfg = toy_cfg(str(tmp_path), SOLVER__CLIP_GRADIENTS__ENABLED=True)
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = value
    params = [torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(3))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0, 4.0])
    params[1].grad = torch.tensor([0.0, 12.0, 0.0])
    build_grad_clipper(cfg)(params)
    if clip_type == "norm":
        total = torch.cat([p.grad for p in params]).norm()
        assert total == pytest.approx(0.5, rel=1e-5)
        assert params[0].grad[3] / params[0].grad[0] == pytest.approx(4 / 3)
    else:
        assert torch.cat([p.grad for p in params]).abs().max() == pytest.approx(0.01)


def test_grad_clipping_disabled_and_bad_type(tmp_path):
    cfg = toy_cfg(str(tmp_path))
    assert build_grad_clipper(cfg) is None
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    with pytest.raises(ValueError, match="full_model"):
        build_grad_clipper(cfg)
