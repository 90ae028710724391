"""Behaviours the official code has and the paper configs follow (issue 15): no location loss on dense captions,
SAM's stochastic depth in training, the mask focal alpha, the official resize kernels."""
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from pixelllm_d2.config import get_cfg
from pixelllm_d2.modeling.backbone.sam_vit import build_sam_image_encoder
from pixelllm_d2.modeling.losses import mask_losses

from .test_densecap import densecap_input, densecap_model
from .tiny import REPO_CFG_DIR


@pytest.mark.parametrize("config", ["vg_densecap.yaml", "joint_trace_ref_densecap.yaml"])
def test_paper_configs_put_no_location_loss_on_dense_captions(config):
    cfg = get_cfg()
    cfg.merge_from_file(f"{REPO_CFG_DIR}/{config}")
    assert not cfg.MODEL.PIXELLLM.LOSS.REGION_POINTS
    # the paper value on the tiny dense-caption model: detector and text losses, no point loss
    model = densecap_model("MODEL.PIXELLLM.LOSS.REGION_POINTS", cfg.MODEL.PIXELLLM.LOSS.REGION_POINTS)
    model.train()
    losses = model([densecap_input()])
    assert "loss_text" in losses and "loss_cls" in losses and "loss_point" not in losses
    located = densecap_model("MODEL.PIXELLLM.LOSS.REGION_POINTS", True)  # the shapes config's setting
    located.train()
    assert "loss_point" in located([densecap_input()])


def test_sam_drop_path_only_in_training_and_also_when_frozen():
    torch.manual_seed(0)
    encoder = build_sam_image_encoder("custom", img_size=64, window_size=2, out_chans=16, embed_dim=32, depth=4,
                                      num_heads=2, global_attn_indexes=[3], drop_path=0.5)
    encoder.requires_grad_(False)  # frozen, as in every official config
    rates = [b.drop_path.drop_prob for b in encoder.blocks]
    assert rates == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])  # linear per block, official 0.5 * i / (depth - 1)
    x = torch.randn(2, 3, 64, 64)
    encoder.train()
    torch.manual_seed(1)
    a = encoder(x)
    b = encoder(x)
    assert not torch.allclose(a, b)  # two training passes differ
    encoder.eval()
    assert torch.equal(encoder(x), encoder(x))  # evaluation is deterministic
    plain = build_sam_image_encoder("custom", img_size=64, window_size=2, out_chans=16, embed_dim=32, depth=4,
                                    num_heads=2, global_attn_indexes=[3])
    plain.load_state_dict(encoder.state_dict())  # the same parameters: drop-path adds none
    plain.train()
    assert torch.allclose(plain(x), encoder(x), atol=1e-5)  # rate 0 (and evaluation) is the plain SAM block


def test_mask_focal_alpha_is_the_official_half():
    cfg = get_cfg()
    assert cfg.MODEL.PIXELLLM.LOSS.MASK_FOCAL_ALPHA == 0.5
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 8)
    gt = torch.rand(2, 8, 8) > 0.6
    valid = torch.ones_like(gt)
    for alpha in (0.5, 0.25):
        expected = sigmoid_focal_loss(logits, gt.float(), alpha=alpha, gamma=2.0, reduction="none").mean(dim=(1, 2)).mean()
        assert mask_losses(logits, torch.zeros(2), gt, valid, alpha)["focal"] == pytest.approx(float(expected))
    # alpha 0.5 weighs positives and negatives alike: half the unweighted focal loss
    unweighted = sigmoid_focal_loss(logits, gt.float(), alpha=-1, gamma=2.0, reduction="none").mean(dim=(1, 2)).mean()
    assert mask_losses(logits, torch.zeros(2), gt, valid, 0.5)["focal"] == pytest.approx(0.5 * float(unweighted))


@pytest.mark.parametrize("rope, position_1", [("official", 1.0), ("timm", 16 / 27)])
def test_eva02_rotary_positions(rope, position_1):
    from pixelllm_d2.modeling.backbone.eva02 import EVA02Encoder

    enc = EVA02Encoder("eva02_tiny_patch14_224", 384, rope=rope)
    embed = enc.model.rope.get_embed()  # (27 * 27 positions, sin | cos); row 27 is the grid's (1, 0)
    assert enc.grid == (27, 27)
    assert float(embed[27, 0]) == pytest.approx(float(torch.sin(torch.tensor(position_1))), abs=1e-5)
    assert get_cfg().MODEL.PIXELLLM.EVA02.ROPE == "official"


def test_fusion_resizes_with_the_official_cubic_kernel():
    """SAM's 24x24 map is resized to EVA02's 27x27 at paper scale with jax.image.resize's cubic (Keys a = -0.5);
    here SAM's 7x7 map (112 px / 16) to EVA02's 8x8 (112 px / 14)."""
    from .test_weights import _jax_resize_weights, _keys_cubic
    from .tiny import tiny_model

    model = tiny_model("INPUT.IMAGE_SIZE", 112, "MODEL.PIXELLLM.EVA02.PATCH_SIZE", 14).eval()
    images = torch.rand(1, 3, 112, 112) * 255
    with torch.no_grad():
        out = model.backbone(images, [(112, 112)])
    sam = out["sam"]
    assert sam.shape[-2:] == (7, 7) and out["fused"].shape[-2:] == (8, 8)
    w = _jax_resize_weights(7, 8, _keys_cubic)
    want = torch.einsum("ij,bcjk,lk->bcil", w, sam.double(), w)
    fused_sam = out["fused"][:, -sam.shape[1]:]  # EVA02 channels first, then SAM's (official order)
    torch.testing.assert_close(fused_sam.double(), want, rtol=0, atol=1e-5)
