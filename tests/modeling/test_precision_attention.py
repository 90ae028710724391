"""The paper-scale execution options on the real (tiny) model: SDPA attention equal to each library's eager one,
frozen weights in bf16 under autocast (never in the optimizer), activation checkpointing with unchanged gradients,
and the FLOP counter the benchmark's MFU figures rest on."""
import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import image_encoder, transformer

from pixelllm_d2.engine.optimizer import build_optimizer
from pixelllm_d2.modeling.attention import SDPAImageAttention, SDPATwoWayAttention, attention_paths, set_attention
from pixelllm_d2.utils.flops import count_flops, matmul_peak_flops

from .tiny import make_batch, tiny_cfg, tiny_model

PARTS = {"backbone.sam", "backbone.eva02", "prompt_extractor", "language", "mask_head"}


@pytest.mark.parametrize("rel_pos,size", [(True, (6, 6)), (True, (4, 7)), (False, (5, 5))])
def test_sam_encoder_attention_sdpa_equals_eager(rel_pos, size):
    torch.manual_seed(0)
    eager = image_encoder.Attention(32, num_heads=4, use_rel_pos=rel_pos, input_size=size)
    if rel_pos:  # SAM zero-initialises them; random tables test the bias path
        torch.nn.init.normal_(eager.rel_pos_h)
        torch.nn.init.normal_(eager.rel_pos_w)
    sdpa = image_encoder.Attention(32, num_heads=4, use_rel_pos=rel_pos, input_size=size)
    sdpa.load_state_dict(eager.state_dict())
    set_attention(sdpa, "sdpa")
    assert type(sdpa) is SDPAImageAttention and sdpa.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(2, *size, 32)
    torch.testing.assert_close(sdpa(x), eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("downsample", [1, 2])
def test_two_way_attention_sdpa_equals_eager(downsample):
    torch.manual_seed(0)
    eager = transformer.Attention(32, num_heads=4, downsample_rate=downsample)
    sdpa = transformer.Attention(32, num_heads=4, downsample_rate=downsample)
    sdpa.load_state_dict(eager.state_dict())
    set_attention(sdpa, "sdpa")
    assert type(sdpa) is SDPATwoWayAttention
    q, k = torch.randn(3, 5, 32), torch.randn(3, 9, 32)
    torch.testing.assert_close(sdpa(q, k, k), eager(q, k, k), rtol=1e-5, atol=1e-5)
    set_attention(sdpa, "eager")
    assert type(sdpa) is transformer.Attention


def test_model_attention_switch_keeps_losses_and_reports_every_part():
    losses = {}
    for impl in ("eager", "sdpa"):
        model = tiny_model("MODEL.PIXELLLM.ATTENTION", impl)
        assert attention_paths(model) == {part: impl for part in PARTS}
        torch.manual_seed(0)
        losses[impl] = {k: float(v) for k, v in model(make_batch()).items()}
    assert losses["sdpa"].keys() == losses["eager"].keys()
    for k, v in losses["eager"].items():
        assert losses["sdpa"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    with pytest.raises(ValueError, match="MODEL.PIXELLLM.ATTENTION must be one of"):
        tiny_model("MODEL.PIXELLLM.ATTENTION", "flash")


def _linear_and_embedding_weights(model):
    return {f"{n}.{k}": p for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            for k, p in m.named_parameters(recurse=False)}


def test_bf16_frozen_weights_in_float32_compute_equal_rounded_float32_weights():
    """Without autocast (CPUs without bf16 units) each frozen layer upcasts its bf16 weight: the losses and
    gradients are those of the float32 model whose frozen weights hold the same (bf16-rounded) values, up to the
    one rounding transformers' T5 adds (its FFN activations cast to the weight dtype before `wo`)."""
    low = tiny_model("MODEL.PIXELLLM.FROZEN_DTYPE", "bfloat16")
    cast = {n: p for n, p in _linear_and_embedding_weights(low).items() if not p.requires_grad}
    assert cast and {p.dtype for p in cast.values()} == {torch.bfloat16}
    assert {p.dtype for n, p in low.named_parameters() if p.requires_grad} == {torch.float32}
    reference = tiny_model()
    reference.load_state_dict({k: v.float() for k, v in low.state_dict().items()})
    results = []
    for model in (low, reference):
        torch.manual_seed(0)
        losses = model(make_batch())
        sum(losses.values()).backward()
        results.append(({k: float(v) for k, v in losses.items()},
                        {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (l_low, g_low), (l_ref, g_ref) = results
    assert l_low == pytest.approx(l_ref, rel=2e-4)
    assert g_low.keys() == g_ref.keys()
    for n in g_ref:
        torch.testing.assert_close(g_low[n], g_ref[n], rtol=0.05, atol=2e-4, msg=n)
    # outside the language model nothing rounds: the image features are exactly the reference's
    low.eval(), reference.eval()
    with torch.no_grad():
        a, b = low.encode_images(make_batch()), reference.encode_images(make_batch())
    assert torch.equal(a.fused, b.fused) and torch.equal(a.sam, b.sam)


def test_bf16_frozen_weights_train_and_infer_under_autocast():
    opts = ("MODEL.PIXELLLM.FROZEN_DTYPE", "bfloat16", "SOLVER.AMP.ENABLED", True, "TEST.AMP.ENABLED", True)
    model = tiny_model(*opts)
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for n, p in _linear_and_embedding_weights(model).items() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    optimizer = build_optimizer(tiny_cfg(*opts), model)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in trainable.values()}  # no frozen weight, no float32 copy of one
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(make_batch())
    sum(losses.values()).backward()
    optimizer.step()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.equal(p, before[n]) for n, p in frozen.items())
    assert any(not torch.equal(p, before[n]) for n, p in trainable.items())
    # inference: autocast from TEST.AMP, float32 outputs, the same boxes as the float32 model within bf16 rounding
    reference = tiny_model()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    model.eval(), reference.eval()
    out, ref = model(make_batch())[1], reference(make_batch())[1]
    assert out["pred_boxes"].dtype == torch.float32
    torch.testing.assert_close(out["pred_boxes"], ref["pred_boxes"], rtol=0, atol=2.0)


@pytest.mark.parametrize("key,config", [
    ("MODEL.PIXELLLM.EVA02.GRAD_CHECKPOINTING", "tiny"),
    ("MODEL.PIXELLLM.LANGUAGE.GRAD_CHECKPOINTING", "tiny"),
    ("MODEL.PIXELLLM.PROMPT_EXTRACTOR.GRAD_CHECKPOINTING", "tiny"),
    ("MODEL.PIXELLLM.LANGUAGE.GRAD_CHECKPOINTING", "bert"),
])
def test_activation_checkpointing_keeps_losses_and_gradients(key, config):
    from .tiny import TINY_BERT_CFG, TINY_CFG

    cfg_file, tokenizer = (TINY_CFG, "shapes") if config == "tiny" else (TINY_BERT_CFG, "shapes-wordpiece")
    grads, saved = {}, {}
    for on in (False, True):
        model = tiny_model(key, on, config=cfg_file)
        saved[on] = 0

        def pack(t, on=on):
            saved[on] += 1
            return t

        torch.manual_seed(0)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # checkpointed blocks save only inputs
            losses = model(make_batch(tokenizer=tokenizer))
        sum(losses.values()).backward()
        grads[on] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads[on]["_losses"] = torch.stack([v.detach() for v in losses.values()])
    assert saved[True] < saved[False]  # fewer activations kept for the backward pass
    assert grads[True].keys() == grads[False].keys()
    for n, g in grads[False].items():
        torch.testing.assert_close(grads[True][n], g, rtol=1e-5, atol=1e-7, msg=n)


def test_flop_counter_counts_matmuls_and_cpu_attention_forward_and_backward():
    linear = torch.nn.Linear(64, 32)
    _, flops = count_flops(lambda: linear(torch.randn(10, 64)).sum().backward())
    assert flops == 2 * 10 * 64 * 32 * 2  # forward, and the weight gradient (the input needs none)
    q = torch.randn(1, 4, 16, 8, requires_grad=True)
    _, fwd = count_flops(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=torch.zeros(16, 16)))
    assert fwd == 4 * 4 * 16 * 16 * 8  # two matmuls of 2 * B * H * L * L * D
    _, both = count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    assert both == fwd * 7 // 2  # backward: 2.5 times the forward (torch's formula)


def test_matmul_peak_is_measured():
    assert matmul_peak_flops(torch.float32, torch.device("cpu"), sizes=(64, 128), repeats=1) > 0
