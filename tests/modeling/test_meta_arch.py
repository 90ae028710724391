import math

import pytest
import torch
import torch.nn.functional as F

from pixelllm_d2.modeling.language.location_head import points_to_boxes

from .tiny import ATTENTION_HEAD, encode, make_batch, tiny_model

TASKS = ["trace", "refer", "region", "caption"]
HEADS = {"mlp": (), "map_attention": ATTENTION_HEAD}


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("task", TASKS + ["mixed"])
def test_training_losses_per_task(task, head):
    model = tiny_model(*HEADS[head])
    model.train()
    batch = make_batch()
    if task != "mixed":
        batch = [x for x in batch if x["task"] == task]
    losses = model(batch)
    expected = {
        "trace": {"loss_text", "loss_point"},
        "refer": {"loss_ref_box", "loss_mask_focal", "loss_mask_dice", "loss_mask_iou"},
        "region": {"loss_text", "loss_point"},
        "caption": {"loss_text"},
    }
    want = set().union(*expected.values()) if task == "mixed" else expected[task]
    if head == "map_attention" and task != "caption":
        want = want | {"loss_cell"}  # every located token and the referring box
    assert set(losses) == want
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())


@pytest.mark.parametrize(
    "opts",
    [
        (),
        # the shapes config's extra tokens: the projected map, pooled, beside the query tokens
        ("MODEL.PIXELLLM.PROMPT_EXTRACTOR.FUSE", "sparse+dense", "MODEL.PIXELLLM.PROMPT_EXTRACTOR.DENSE_SOURCE", "input",
         "MODEL.PIXELLLM.PROMPT_EXTRACTOR.DENSE_GRID", 2),
    ],
    ids=["sparse", "sparse+dense"],
)
def test_gradients_reach_trainable_parts_and_never_frozen_ones(batch, opts):
    model = tiny_model(*opts)
    model.train()
    sum(model(batch).values()).backward()
    params = dict(model.named_parameters())

    def grads(prefix, lora=None):
        sel = {n: p for n, p in params.items() if n.startswith(prefix) and (lora is None or ("lora_" in n) == lora)}
        assert sel, prefix
        return sel

    for prefix, lora in [
        ("language.t5", True),
        ("language.visual_proj", None),
        ("location_head", None),
        ("prompt_extractor", None),
        ("backbone.eva02", None),
        ("mask_head.adapter", None),
    ] + ([("prompt_extractor.dense_output", None)] if opts else []):
        sel = grads(prefix, lora)
        with_grad = [n for n, p in sel.items() if p.grad is not None and p.grad.abs().sum() > 0]
        assert with_grad, f"no gradient reached {prefix}"
        assert all(p.requires_grad for p in sel.values())
    for prefix, lora in [("backbone.sam", None), ("language.t5", False), ("prompt_encoder", None), ("mask_head.decoder", None)]:
        for n, p in grads(prefix, lora).items():
            assert not p.requires_grad and p.grad is None, f"frozen parameter {n} got a gradient"


def test_shared_prompts_run_the_extractor_once_with_identical_results(batch):
    model = tiny_model()
    model.eval()
    from pixelllm_d2.modeling.prompt.visual_tokens import encode_prompts

    # two images, two expressions each, all with their image's whole-image prompt
    other = dict(batch[1], image=torch.flip(batch[1]["image"], dims=[-1]))
    refer = [batch[1], other]
    q = model.queries(refer)
    calls = []
    hook = model.prompt_extractor.register_forward_hook(lambda m, i, o: calls.append(i[2].shape[0]))
    feats = model.encode_images(refer)
    shared = encode_prompts(model.prompt_encoder, model.prompt_extractor, feats.fused, q)
    hook.remove()
    assert calls == [2]  # one pass per distinct (image, prompt)
    separate = torch.cat([model.encode_boxes(feats, q.image_index[k : k + 1], q.boxes[k : k + 1]) for k in range(4)])
    assert torch.allclose(shared, separate, atol=1e-6)
    assert not torch.allclose(shared[0], shared[2], atol=1e-3)  # each query got its own image's tokens


def test_region_tokens_are_located_at_the_region_box():
    # official get_gt_points_from_boxes: every token of a region caption is trained towards the region's box
    model = tiny_model()
    region = [x for x in make_batch() if x["task"] == "region"]
    q = model.queries(region, require_targets=True)
    gt, valid = model.location_head.token_targets(q, model.tokenizer.eos_id)
    n = int(((q.target_ids != 0) & (q.target_ids != 1)).sum())
    assert int(valid.sum()) == n == 3  # "small red circle", EOS excluded
    assert torch.equal(gt[valid], torch.tensor([[5.0, 5.0, 30.0, 30.0]]).expand(n, 4))
    off = tiny_model("MODEL.PIXELLLM.LOSS.REGION_POINTS", "False")
    assert not off.location_head.token_targets(q, model.tokenizer.eos_id)[1].any()


def test_task_fraction_scales_losses():
    # Each loss is multiplied by the share of the batch carrying its task (the official per-sample task masks).
    model = tiny_model()
    model.train()
    trace_only = [x for x in make_batch() if x["task"] == "trace"]
    torch.manual_seed(0)
    alone = model(trace_only)["loss_point"]
    both = [x for x in make_batch() if x["task"] in ("trace", "refer")]
    torch.manual_seed(0)
    mixed = model(both)["loss_point"]
    assert torch.allclose(mixed, alone / 2, rtol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_inference_outputs_follow_the_contract(batch, head):
    model = tiny_model(*HEADS[head])
    model.eval()
    for x in batch:
        if x["task"] in ("region", "caption"):
            x.pop("target_ids")
        x.pop("token_boxes", None)
    outs = model(batch)
    assert [o["task"] for o in outs] == [x["task"] for x in batch]
    for x, o in zip(batch, outs):
        n = x["context_ids"].shape[0]
        H, W = x["height"], x["width"]
        assert o["pred_boxes"].shape == (n, 4) and o["scores"].shape == (n,)
        assert len(o["captions"]) == len(o["words"]) == len(o["token_ids"]) == n
        for ids, tb, words, wb, wp in zip(o["token_ids"], o["token_boxes"], o["words"], o["word_boxes"], o["word_points"]):
            assert tb.shape == (len(ids), 4)
            assert wb.shape == (len(words), 4) and wp.shape == (len(words), 2)
            for boxes in (tb, wb, o["pred_boxes"]):
                assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
                assert (boxes >= 0).all() and (boxes[:, 0::2] <= W).all() and (boxes[:, 1::2] <= H).all()
    refer = outs[1]
    assert refer["captions"] == ["the red circle", "the blue square"]
    assert refer["pred_masks"].shape == (2, 96, 128) and refer["pred_masks"].dtype == torch.bool
    region = outs[2]
    assert torch.equal(region["pred_boxes"], torch.tensor([[5.0, 5.0, 30.0, 30.0]]))


def _pad_text(batch, extra):
    """The batch with `extra` more pad columns in every context / target (and its token boxes)."""
    out = []
    for x in batch:
        x = dict(x, context_ids=F.pad(x["context_ids"], (0, extra)))
        if "target_ids" in x:
            x["target_ids"] = F.pad(x["target_ids"], (0, extra))
        if "token_boxes" in x:
            x["token_boxes"] = F.pad(x["token_boxes"], (0, 0, 0, extra))
        out.append(x)
    return out


@pytest.mark.parametrize("head", HEADS)
def test_trailing_text_padding_changes_nothing(batch, head):
    # The mapper pads to MAX_CONTEXT_LEN / MAX_TEXT_LEN and the predictor to the longest text of a call; the model
    # drops all-pad columns and pads the mask adapter's text to MAX_TEXT_LEN, so no result depends on the padding.
    model = tiny_model(*HEADS[head])
    model.train()
    torch.manual_seed(0)
    short = model(batch)
    torch.manual_seed(0)
    long = model(_pad_text(batch, 6))
    assert short.keys() == long.keys()
    for k in short:
        assert torch.allclose(short[k], long[k], atol=1e-6), k
    model.eval()
    short, long = model(batch), model(_pad_text(batch, 6))
    assert torch.allclose(short[1]["pred_boxes"], long[1]["pred_boxes"], atol=1e-5)
    assert torch.equal(short[1]["pred_masks"], long[1]["pred_masks"])
    for a, b in zip(short[0]["token_boxes"], long[0]["token_boxes"]):  # teacher-forced trace
        assert torch.allclose(a, b, atol=1e-5)


def test_a_referring_result_does_not_depend_on_the_other_expressions(batch):
    # The language model runs on the batch's longest text; a shorter expression's box and mask must not change.
    model = tiny_model()
    model.eval()
    with torch.no_grad():
        model.mask_head.adapter.alpha.fill_(1.0)  # open the adapter's gate (zero at init) so the text reaches the mask
    x = {k: v for k, v in batch[1].items() if k not in ("ref_boxes", "gt_masks")}
    alone = dict(x, prompt_boxes=x["prompt_boxes"][:1], context_ids=x["context_ids"][:1], target_ids=x["target_ids"][:1])
    longer = dict(x, context_ids=torch.stack([x["context_ids"][0], encode("where is the small blue square on the left")]),
                  target_ids=torch.stack([x["target_ids"][0], encode("the small blue square on the left")]))
    a, b = model([alone])[0], model([longer])[0]
    assert torch.allclose(a["pred_boxes"][0], b["pred_boxes"][0], atol=1e-5)
    # batch-size numerics move the score by ~5e-5; a text-length dependence moved it by 6e-4 (measured)
    assert torch.allclose(a["mask_scores"][0], b["mask_scores"][0], atol=2e-4)
    ma, mb = a["pred_masks"][0], b["pred_masks"][0]
    assert (ma & mb).sum() / (ma | mb).sum().clamp(min=1) > 0.99


@pytest.mark.parametrize("cap,trained", [(0, 2), (1, 1), (5, 2)])
def test_mask_train_max_queries_caps_the_trained_masks(batch, cap, trained):
    model = tiny_model("MODEL.PIXELLLM.MASK_HEAD.TRAIN_MAX_QUERIES", cap)
    model.train()
    seen = []
    hook = model.mask_head.register_forward_hook(lambda m, i, o: seen.append(o[0].shape[0]))
    losses = model([batch[1]])  # two referring expressions with masks
    hook.remove()
    assert seen == [trained]
    assert all(torch.isfinite(losses[k]) for k in ("loss_mask_focal", "loss_mask_dice", "loss_mask_iou"))


@pytest.mark.parametrize("key,value,message", [("TRAIN_MAX_QUERIES", -1, r"train_max_queries \(MASK_HEAD.TRAIN_MAX_QUERIES\) must be >= 0"),
                                               ("TRAIN_BOX_NOISE", -0.1, r"train_box_noise \(MASK_HEAD.TRAIN_BOX_NOISE\) must be >= 0")])
def test_mask_train_options_must_not_be_negative(key, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(f"MODEL.PIXELLLM.MASK_HEAD.{key}", value)


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_mask_head_trains_on_the_gt_box_with_optional_noise(batch, noise):
    model = tiny_model("MODEL.PIXELLLM.MASK_HEAD.TRAIN_PROMPT", "gt", "MODEL.PIXELLLM.MASK_HEAD.TRAIN_BOX_NOISE", noise)
    model.train()
    prompts = []
    orig = model.prompt_encoder.embed_boxes
    model.prompt_encoder.embed_boxes = lambda boxes: prompts.append(boxes.clone()) or orig(boxes)
    model([batch[1]])
    gt, mask_prompt = batch[1]["ref_boxes"], prompts[-1]  # the first call embeds the whole-image prompt
    assert len(prompts) == 2 and mask_prompt.shape == gt.shape
    if noise == 0.0:
        assert torch.equal(mask_prompt, gt)
    else:
        assert not torch.equal(mask_prompt, gt)
        assert (mask_prompt[:, 0] <= mask_prompt[:, 2]).all() and (mask_prompt[:, 1] <= mask_prompt[:, 3]).all()


@pytest.mark.parametrize("head", HEADS)
def test_referring_box_is_the_last_words_location(batch, head):
    model = tiny_model(*HEADS[head])
    model.eval()
    out = model([batch[1]])[0]
    for box, token_boxes in zip(out["pred_boxes"], out["token_boxes"]):
        assert torch.allclose(box, token_boxes[-1], atol=1e-5)


def test_point_prompts_and_whole_image_default(batch):
    model = tiny_model()
    model.eval()
    x = dict(batch[2])
    x.pop("target_ids")
    x.pop("prompt_boxes")
    x["prompt_points"] = torch.tensor([[[10.0, 12.0], [20.0, 22.0]]])
    out_points = model([x])[0]
    assert len(out_points["captions"]) == 1
    y = dict(batch[3])
    y.pop("target_ids")
    y.pop("prompt_boxes")  # no prompt: the whole image is the box prompt
    out_default = model([y])[0]
    assert torch.equal(out_default["pred_boxes"], torch.tensor([[0.0, 0.0, 64.0, 48.0]]))


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda x: x.update(image=x["image"].float()), TypeError, "uint8"),
        (lambda x: x.update(image=torch.zeros(4, 48, 64, dtype=torch.uint8)), ValueError, "(3, h, w)"),
        (lambda x: x.update(image=torch.zeros(3, 48, 128, dtype=torch.uint8)), ValueError, "longest side"),
        (lambda x: x.update(prompt_boxes=torch.tensor([[5.0, 5.0, 90.0, 30.0]])), ValueError, "outside"),
        (lambda x: x.update(prompt_boxes=torch.tensor([[30.0, 5.0, 5.0, 30.0]])), ValueError, "x1 < x0"),
        (lambda x: x.update(prompt_boxes=torch.tensor([[5.0, float("nan"), 9.0, 30.0]])), ValueError, "non-finite"),
        (lambda x: x.update(task="segment"), ValueError, "task"),
    ],
)
def test_bad_inputs_name_the_problem(batch, mutate, error, message):
    model = tiny_model()
    model.eval()
    x = batch[2]
    mutate(x)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        model([x])


def test_empty_referring_expression_is_an_error(batch):
    model = tiny_model()
    model.train()
    x = batch[1]
    x["target_ids"] = torch.stack([encode(""), encode("the blue square")])
    with pytest.raises(ValueError, match="empty referring expression"):
        model([x])


@pytest.mark.parametrize("head", HEADS)
def test_beam_and_greedy_both_decode(batch, head):
    model = tiny_model(*HEADS[head])
    model.eval()
    x = batch[3]
    x.pop("target_ids")
    greedy = model.inference([x])[0]
    beam = model.inference([x], decode=dict(method="beam", num_beams=3))[0]
    for out in (greedy, beam):
        assert len(out["token_ids"][0]) <= 8 and math.isfinite(float(out["scores"][0]))


def test_points_to_boxes_orders_corners():
    pts = torch.tensor([[[10.0, 40.0], [2.0, 5.0]]])
    assert torch.equal(points_to_boxes(pts), torch.tensor([[2.0, 5.0, 10.0, 40.0]]))


def test_cell_loss_trains_the_attention_towards_the_target_cells(batch):
    # The referring expression's attention logits at its last word are trained towards the cells inside its box.
    model = tiny_model(*ATTENTION_HEAD)
    model.train()
    refer = [batch[1]]
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if n.startswith("location_head.")], lr=0.5)
    first = None
    for _ in range(20):
        loss = model(refer)["loss_cell"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    off = tiny_model(*ATTENTION_HEAD[:2])  # CELL_WEIGHT 0: no cell loss
    off.train()
    assert "loss_cell" not in off(refer)
