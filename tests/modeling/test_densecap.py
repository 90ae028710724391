import sys

import pytest
import torch
import torchvision

import pixelllm_d2.modeling.meta_arch.pixelllm as meta
from pixelllm_d2.config import get_cfg
from pixelllm_d2.modeling import build_model
from pixelllm_d2.modeling.proposal import SimpleFeaturePyramid

from .tiny import REPO_CFG_DIR, encode


def densecap_model(*opts, seed=0):
    cfg = get_cfg()
    cfg.merge_from_file(f"{REPO_CFG_DIR}/tiny/pixelllm_tiny_densecap.yaml")
    cfg.merge_from_list(list(opts))
    torch.manual_seed(seed)
    return build_model(cfg)


def densecap_input(seed=0, h=48, w=64):
    g = torch.Generator().manual_seed(seed)
    return dict(
        image=torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), height=2 * h, width=2 * w, task="densecap",
        gt_boxes=torch.tensor([[2.0, 3.0, 20.0, 30.0], [30.0, 10.0, 60.0, 40.0]]),
        gt_target_ids=torch.stack([encode("small red circle"), encode("large blue square")]),
    )


def test_pyramid_levels():
    pyr = SimpleFeaturePyramid(40, 16)
    out = pyr(torch.randn(2, 40, 27, 27))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(54, 54), (27, 27), (13, 13), (7, 7), (4, 4)]
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]


def test_training_losses_and_gradients():
    model = densecap_model()
    model.train()
    losses = model([densecap_input(0), densecap_input(1)])
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_text"} <= set(losses)
    sum(losses.values()).backward()
    for prefix in ("proposal_generator.pyramid", "proposal_generator.rpn.head", "roi_heads.objectness", "prompt_extractor"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith(prefix)), prefix


def test_inference_outputs_in_original_pixels_and_one_batched_decode(monkeypatch):
    model = densecap_model()
    model.eval()
    calls = []
    real = meta.generate

    def counting(*args, **kwargs):
        calls.append(args[1].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(meta, "generate", counting)
    outs = model([densecap_input(0), densecap_input(1, h=64, w=40)])
    assert len(calls) == 1 and calls[0] == sum(len(o["pred_boxes"]) for o in outs)  # every region, one decode
    for o, (H, W) in zip(outs, [(96, 128), (128, 80)]):
        n = len(o["pred_boxes"])
        assert 0 < n <= 10 and o["scores"].shape == (n,) and len(o["captions"]) == n
        assert (o["scores"][:-1] >= o["scores"][1:]).all()
        b = o["pred_boxes"]
        assert (b >= 0).all() and (b[:, 0::2] <= W).all() and (b[:, 1::2] <= H).all()


def test_no_roi_align_or_roi_pool_in_the_captioning_path(monkeypatch):
    model = densecap_model()
    banned = (torchvision.ops.RoIAlign, torchvision.ops.RoIPool, torchvision.ops.MultiScaleRoIAlign, torchvision.ops.PSRoIAlign)
    assert not [n for n, m in model.named_modules() if isinstance(m, banned)]

    def forbidden(*a, **k):
        raise AssertionError("RoIAlign / RoIPool called")

    for name in ("roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool"):
        monkeypatch.setattr(torchvision.ops, name, forbidden)
        monkeypatch.setattr(sys.modules[f"torchvision.ops.{name}"], name, forbidden)
    model.train()
    model([densecap_input()])
    model.eval()
    model([densecap_input()])


def test_nothing_above_threshold_gives_empty_outputs():
    model = densecap_model("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0")
    model.eval()
    out = model([densecap_input()])[0]
    assert out["pred_boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["captions"] == []


@pytest.mark.parametrize(
    "proposals, expected_max",
    [
        (torch.tensor([[10.0, 10.0, 10.0, 30.0], [5.0, 5.0, 5.0, 5.0]]), 0),  # zero-area proposals only
        (torch.tensor([[10.0, 10.0, 30.0, 30.0]]), 1),  # one proposal
    ],
)
def test_degenerate_proposals(monkeypatch, proposals, expected_max):
    model = densecap_model()
    model.eval()
    # the ROI head refines boxes; zero its deltas so degenerate proposals stay degenerate
    torch.nn.init.zeros_(model.roi_heads.deltas.weight)
    monkeypatch.setattr(model.proposal_generator, "forward", lambda fused, sizes, gt=None: ([proposals.clone() for _ in sizes], {}))
    out = model([densecap_input()])[0]
    assert len(out["pred_boxes"]) <= expected_max and len(out["captions"]) == len(out["pred_boxes"])


def test_caption_score_mode_reranks():
    model = densecap_model("MODEL.ROI_HEADS.SCORE_MODE", "det_x_caption")
    model.eval()
    out = model([densecap_input()])[0]
    s = out["scores"]
    assert ((s >= 0) & (s <= 1)).all() and (s[:-1] >= s[1:]).all()
    with pytest.raises(ValueError, match="dense-caption score"):
        densecap_model("MODEL.ROI_HEADS.SCORE_MODE", "caption")


def test_densecap_input_without_the_head_is_a_clear_error():
    cfg = get_cfg()
    cfg.merge_from_file(f"{REPO_CFG_DIR}/tiny/pixelllm_tiny.yaml")
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="DENSECAP_ON"):
        model([densecap_input()])


SHARED_DENSE = ("MODEL.PIXELLLM.PROMPT_EXTRACTOR.FUSE", "sparse+dense", "MODEL.PIXELLLM.PROMPT_EXTRACTOR.DENSE_SOURCE",
                "input", "MODEL.PIXELLLM.PROMPT_EXTRACTOR.DENSE_GRID", 2)


@pytest.mark.parametrize("tokens,box_tokens", [("all", 0), ("query", 4)])
def test_box_head_can_pool_only_the_query_tokens(tokens, box_tokens):
    # The projected map's dense tokens are the same for every proposal of an image; "query" leaves them out.
    model = densecap_model(*SHARED_DENSE, "MODEL.ROI_HEADS.BOX_HEAD_TOKENS", tokens)
    heads = model.roi_heads
    assert heads.box_tokens == box_tokens
    n = model.prompt_extractor.num_queries
    visual = torch.randn(3, n + 4, heads.box_head[0].normalized_shape[0])
    changed = visual.clone()
    changed[:, n:] = torch.randn(3, 4, visual.shape[-1])  # other dense tokens
    same = all(torch.equal(a, b) for a, b in zip(heads.predict(visual), heads.predict(changed)))
    assert same == (tokens == "query")
    changed[:, 0] += 1.0
    assert not torch.equal(heads.predict(visual)[0], heads.predict(changed)[0])


@pytest.mark.parametrize("opts,message", [
    (("MODEL.ROI_HEADS.BOX_HEAD_TOKENS", "dense"), "must be 'all' or 'query'"),
    (("MODEL.ROI_HEADS.BOX_HEAD_TOKENS", "query", "MODEL.PIXELLLM.PROMPT_EXTRACTOR.FUSE", "dense"), "needs query tokens"),
])
def test_box_head_tokens_bad_values(opts, message):
    with pytest.raises(ValueError, match=message):
        densecap_model(*opts)
