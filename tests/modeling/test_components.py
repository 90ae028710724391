import math

import pytest
import torch

from pixelllm_d2.modeling.backbone import DualViTBackbone, EVA02Encoder, build_sam_image_encoder
from pixelllm_d2.modeling.language.location_head import MapAttentionLocationHead, MLPLocationHead, cell_targets
from pixelllm_d2.modeling.losses import cell_loss, corner_l1_loss, mask_losses, text_loss
from pixelllm_d2.modeling.prompt import SAMPromptEncoder, TwoWayPromptExtractor

from .tiny import tiny_cfg


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "size, img_size, expected",
    [("vit_h", 384, 632_469_248), ("vit_h", 1024, 637_026_048), ("vit_b", 1024, 89_670_912)],
)
def test_sam_encoder_parameter_counts(size, img_size, expected):
    with torch.device("meta"):
        enc = build_sam_image_encoder(size, img_size=img_size)
    assert count(enc) == expected


def test_eva02_large_parameter_count_at_384():
    with torch.device("meta"):
        enc = EVA02Encoder("eva02_large_patch14_448", 384)
    assert count(enc) == 303_753_152 and enc.grid == (27, 27) and enc.out_channels == 1024


def test_unknown_sizes_are_errors():
    with pytest.raises(ValueError, match="unknown SAM encoder size"):
        build_sam_image_encoder("vit_x")
    with pytest.raises(ValueError, match="cannot build timm model"):
        EVA02Encoder("eva02_nonexistent", 64)


@pytest.mark.parametrize("eva", [True, False])
def test_dual_backbone_fuses_to_one_grid(eva):
    cfg = tiny_cfg("MODEL.PIXELLLM.EVA02.ENABLED", str(eva), "MODEL.PIXELLLM.EVA02.PATCH_SIZE", "14")
    bb = DualViTBackbone(cfg).eval()
    images = torch.zeros(2, 3, 64, 64)
    images[0, :, :40, :64] = 128
    out = bb(images, [(40, 64), (64, 30)])
    # SAM: 64 / 16 = 4; EVA02 with 14 px patches: 64 // 14 = 4 -> one grid of 4x4
    assert out["sam"].shape == (2, 32, 4, 4)
    assert out["fused"].shape == (2, 32 + (32 if eva else 0), 4, 4)
    assert bb.out_channels == out["fused"].shape[1]


def test_padding_is_zero_after_normalisation():
    bb = DualViTBackbone(tiny_cfg()).eval()
    img = torch.full((1, 3, 64, 64), 200.0)
    a = bb._normalise(img, torch.ones(1, 1, 64, 64), bb.sam_pixel_mean, bb.sam_pixel_std)
    valid = torch.zeros(1, 1, 64, 64)
    valid[..., :32, :] = 1
    b = bb._normalise(img, valid, bb.sam_pixel_mean, bb.sam_pixel_std)
    assert torch.equal(b[..., 32:, :], torch.zeros_like(b[..., 32:, :])) and torch.equal(a[..., :32, :], b[..., :32, :])


def test_prompt_encoder_pads_to_five_tokens_and_accepts_points():
    pe = SAMPromptEncoder(embed_dim=32, image_size=64, sam_grid=4, num_tokens=5, freeze=True)
    boxes = pe(boxes=torch.tensor([[1.0, 2.0, 30.0, 40.0], [0, 0, 64, 64]]))
    assert boxes.shape == (2, 5, 32)
    assert torch.equal(boxes[:, 2:], pe.no_mask_embed.expand(2, 3, 32))
    pts = pe(points=torch.rand(3, 2, 2) * 60)
    assert pts.shape == (3, 5, 32)
    many = pe(points=torch.rand(1, 7, 2) * 60)
    assert many.shape == (1, 8, 32)  # 7 points + SAM's padding point
    with pytest.raises(ValueError, match="exactly one"):
        pe()
    assert not any(p.requires_grad for p in pe.parameters())


def test_dense_box_prompt_marks_the_box_cells():
    pe = SAMPromptEncoder(embed_dim=32, image_size=64, sam_grid=4, num_tokens=5, freeze=True, dense_box=True)
    seen = {}
    pe.sam.mask_downscaling.register_forward_hook(lambda m, i, o: seen.update(masks=i[0]))
    boxes = torch.tensor([[8.0, 0.0, 24.0, 16.0], [30.0, 30.0, 30.5, 30.5], [0.0, 0.0, 0.0, 0.0]])
    dense = pe.dense(boxes, (4, 4))
    assert dense.shape == (3, 32, 4, 4)
    masks = seen["masks"][:, 0]  # rasterised on a 16x16 grid of 4 px cells, +1 inside / -1 outside
    assert masks.shape == (3, 16, 16)
    assert (masks[0] > 0).nonzero().tolist() == [[y, x] for y in range(4) for x in range(2, 6)]
    assert (masks[1] > 0).sum() == 1 and masks[1, 7, 7] > 0  # thinner than a cell: the cell of its centre
    # a row without a box (point prompt) gets SAM's "no mask" embedding, as without dense_box
    assert torch.equal(dense[2], pe.no_mask_embed.view(32, 1, 1).expand(32, 4, 4))
    plain = SAMPromptEncoder(embed_dim=32, image_size=64, sam_grid=4)
    assert torch.equal(plain.dense(boxes, (4, 4))[0], plain.no_mask_embed.view(32, 1, 1).expand(32, 4, 4))


@pytest.mark.parametrize(
    "fuse,source,grid,tokens",
    [
        ("sparse", "transformer", 0, 6),
        ("dense", "transformer", 0, 16),
        ("dense", "input", 2, 4),
        ("sparse+dense", "transformer", 0, 6 + 16),
        ("sparse+dense", "input", 3, 6 + 9),
    ],
)
def test_prompt_extractor_fuse_options(fuse, source, grid, tokens):
    torch.manual_seed(0)
    ex = TwoWayPromptExtractor(
        in_channels=40, prompt_dim=32, width=16, depth=2, num_heads=2, mlp_dim=32, num_queries=6, out_dim=24,
        fuse=fuse, dense_source=source, dense_grid=grid,
    )
    assert (ex.transformer is None) == (fuse == "dense" and source == "input")
    image, pe = torch.randn(2, 40, 4, 4), torch.randn(1, 32, 4, 4)
    index = torch.tensor([0, 1, 1])
    a = ex(image, index, torch.randn(3, 5, 32), torch.randn(3, 32, 4, 4), pe)
    b = ex(image, index, torch.randn(3, 5, 32), torch.randn(3, 32, 4, 4), pe)
    assert a.shape == b.shape == (3, tokens, 24)
    if "dense" in fuse:
        dense = slice(6 if fuse == "sparse+dense" else 0, None)
        # "input" tokens are the map's own (the same for every prompt of an image); "transformer" tokens are not
        assert torch.equal(a[1, dense], a[2, dense]) == (source == "input")
        assert torch.equal(a[:, dense], b[:, dense]) == (source == "input")
        assert not torch.equal(a[0, dense], a[1, dense])  # another image


def test_prompt_extractor_dense_grid_pools_the_map():
    ex = TwoWayPromptExtractor(in_channels=8, prompt_dim=4, width=8, depth=1, num_heads=2, mlp_dim=8, num_queries=2,
                               out_dim=8, fuse="dense", dense_source="input", dense_grid=2)
    with torch.no_grad():
        ex.image_proj.weight.copy_(torch.eye(8)), ex.image_proj.bias.zero_()
        ex.pe_proj.weight.zero_(), ex.pe_proj.bias.zero_()
        ex.dense_output.weight.copy_(torch.eye(8)), ex.dense_output.bias.zero_()
    image = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 8, 4, 4)
    out = ex(image, torch.tensor([0]), torch.zeros(1, 5, 4), torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4))
    # 2x2 means of the 4x4 map, in raster order
    assert out[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]


@pytest.mark.parametrize("kwargs", [dict(fuse="both"), dict(dense_source="image"), dict(dense_grid=-1)])
def test_prompt_extractor_rejects_bad_options(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TwoWayPromptExtractor(in_channels=8, prompt_dim=4, width=8, depth=1, num_heads=2, mlp_dim=8, **kwargs)


def test_prompt_extractor_outputs_one_token_per_query():
    ex = TwoWayPromptExtractor(in_channels=40, prompt_dim=32, width=16, depth=2, num_heads=2, mlp_dim=32, num_queries=6, out_dim=24)
    out = ex(torch.randn(2, 40, 4, 4), torch.tensor([0, 1, 1]), torch.randn(3, 5, 32), torch.randn(3, 32, 4, 4), torch.randn(1, 32, 4, 4))
    assert out.shape == (3, 6, 24)
    # one Linear per token: changing token 0's weights changes only output token 0
    with torch.no_grad():
        before = ex(torch.ones(1, 40, 4, 4), torch.tensor([0]), torch.ones(1, 5, 32), torch.ones(1, 32, 4, 4), torch.ones(1, 32, 4, 4))
        ex.output.weight[0].add_(torch.randn_like(ex.output.weight[0]))
        after = ex(torch.ones(1, 40, 4, 4), torch.tensor([0]), torch.ones(1, 5, 32), torch.ones(1, 32, 4, 4), torch.ones(1, 32, 4, 4))
    assert not torch.allclose(before[:, 0], after[:, 0]) and torch.equal(before[:, 1:], after[:, 1:])


def test_location_head_maps_zero_output_to_the_image_centre():
    head = MLPLocationHead(in_dim=8, hidden_dim=16, num_layers=4)
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == 4
    torch.nn.init.zeros_(head.mlp[-1].weight)
    torch.nn.init.zeros_(head.mlp[-1].bias)
    pts = head(torch.randn(2, 3, 8), torch.tensor([[100.0, 50.0], [64.0, 48.0]]))
    assert pts.shape == (2, 3, 2, 2)
    assert torch.allclose(pts[0], torch.tensor([50.0, 25.0]).expand(3, 2, 2))
    assert torch.allclose(pts[1], torch.tensor([32.0, 24.0]).expand(3, 2, 2))


def _attention_head():
    torch.manual_seed(0)
    return MapAttentionLocationHead(in_dim=8, map_dim=6, hidden_dim=16, num_layers=2, key_dim=4, image_size=64)


def test_map_attention_head_centres_the_box_on_the_attended_cell():
    head = _attention_head()
    torch.nn.init.zeros_(head.mlp[-1].weight)
    torch.nn.init.zeros_(head.mlp[-1].bias)  # no offset; size = half the image
    fmap = torch.zeros(2, 6, 4, 4)  # 16 px cells over the 64 px input
    fmap[1, :, 2, 3] = 50.0  # image 1: one cell stands out (row 2, column 3)
    with torch.no_grad():
        head.key_pos.weight.zero_()
        head.key_pos.bias.zero_()
        head.key.weight.copy_(torch.eye(4, 6))
        head.key.bias.zero_()
        head.query[1].weight.zero_()
        head.query[1].bias.fill_(10.0)
    wh = torch.tensor([[64.0, 64.0], [64.0, 48.0]])
    corners, logits = head(torch.randn(2, 3, 8), wh, fmap, torch.tensor([0, 1]), return_logits=True)
    assert corners.shape == (2, 3, 2, 2) and logits.shape == (2, 3, 16)
    # image 0: uniform attention -> the centre of the map; image 1: the bright cell's centre (56, 40)
    assert torch.allclose(corners[0].mean(dim=-2), torch.tensor([32.0, 32.0]).expand(3, 2), atol=1e-4)
    assert torch.allclose(corners[1].mean(dim=-2), torch.tensor([56.0, 40.0]).expand(3, 2), atol=1e-3)
    assert torch.allclose(corners[1, :, 1] - corners[1, :, 0], torch.tensor([32.0, 24.0]).expand(3, 2), atol=1e-4)


def test_map_attention_head_never_attends_to_padding_cells():
    head = _attention_head()
    fmap = torch.randn(1, 6, 4, 4)
    wh = torch.tensor([[64.0, 20.0]])  # rows 2 and 3 (y >= 32) hold no image pixel
    corners, logits = head(torch.randn(1, 5, 8), wh, fmap, torch.tensor([0]), return_logits=True)
    p = logits.softmax(-1).view(1, 5, 4, 4)
    assert torch.equal(p[:, :, 2:], torch.zeros_like(p[:, :, 2:])) and (p[:, :, :2] > 0).all()
    with pytest.raises(ValueError, match="needs the fused image map"):
        head(torch.randn(1, 5, 8), wh, None, None)


def test_map_attention_head_keeps_positions_in_float32_under_bf16_autocast():
    head = _attention_head()
    args = (torch.randn(2, 3, 8), torch.tensor([[64.0, 64.0], [64.0, 48.0]]), torch.randn(2, 6, 4, 4), torch.tensor([0, 1]))
    want = head(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(*args)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=2.0)  # bf16 features, float32 positions


@pytest.mark.parametrize(
    "box, cells",
    [
        ([0.0, 0.0, 36.0, 20.0], [0, 1]),  # cell centres (8, 8) and (24, 8) are inside, (40, 8) is not
        ([17.0, 17.0, 22.0, 22.0], [5]),  # no centre inside: the cell holding the box centre
        ([63.0, 63.0, 64.0, 64.0], [15]),
    ],
)
def test_cell_targets_cover_the_box(box, cells):
    t = cell_targets(torch.tensor([box]), (4, 4), 64)
    want = torch.zeros(1, 16)
    want[0, cells] = 1.0 / len(cells)
    assert torch.allclose(t, want)


def test_cell_loss_is_cross_entropy_and_ignores_masked_cells():
    logits = torch.tensor([[2.0, 0.5, float("-inf")], [0.0, 1.0, 3.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    want = (-torch.log_softmax(logits[0], -1)[0] - 0.5 * torch.log_softmax(logits[1], -1)[1:].sum()) / 2
    assert torch.allclose(cell_loss(logits, target), want)
    assert cell_loss(torch.zeros(0, 3), torch.zeros(0, 3)) == 0


def test_text_loss_is_grit_label_smoothing():
    logits = torch.tensor([[[2.0, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]]])
    targets = torch.tensor([[2, 0]])  # second position is padding
    loss = text_loss(logits, targets, torch.tensor([True]), smoothing=0.1)
    logp = torch.log_softmax(logits[0, 0], -1)
    want = -(0.9 * logp[2] + 0.1 / 3 * (logp[0] + logp[1] + logp[3]))
    assert torch.allclose(loss, want)
    # rows starting with EOS and invalid rows carry no loss
    assert text_loss(logits, torch.tensor([[1, 0]]), torch.tensor([True])) == 0
    assert text_loss(logits, targets, torch.tensor([False])) == 0


def test_corner_l1_ignores_invalid_entries():
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 5.0]])
    gt = torch.tensor([[2.0, 0.0, 10.0, 6.0], [100.0, 100.0, 100.0, 100.0]])
    assert corner_l1_loss(pred, gt, torch.tensor([True, False])) == pytest.approx(1.5)


def test_mask_losses_prefer_the_right_mask():
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, 2:6, 2:6] = True
    valid = torch.ones_like(gt)
    good = mask_losses(torch.where(gt, 8.0, -8.0), torch.tensor([1.0]), gt, valid)
    bad = mask_losses(torch.where(gt, -8.0, 8.0), torch.tensor([1.0]), gt, valid)
    assert good["focal"] < bad["focal"] and good["dice"] < bad["dice"] and good["iou"] < bad["iou"]
    assert good["iou"] == pytest.approx(0.0) and bad["iou"] == pytest.approx(1.0)
    assert math.isclose(float(good["dice"]), 0.0, abs_tol=1e-3)
