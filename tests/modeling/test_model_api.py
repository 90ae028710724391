"""The model's public API and its build-time checks: pinned losses, fail-fast options, the predictor's feature
cache, encode once / generate / ground."""
import numpy as np
import pytest
import torch

from pixelllm_d2.modeling import build_model
from pixelllm_d2.modeling.language.location_head import MLPLocationHead
from pixelllm_d2.predictor import PixelLLMPredictor

from .tiny import ATTENTION_HEAD, make_batch, tiny_cfg, tiny_model


# Losses of the seeded tiny model on the seeded batch (one image per task), pinned to catch drift; they are the
# values of the model before the model-core rebuild (issue 13), which changed no number.
PINNED = {
    "mlp": ((), {"loss_text": 4.179566860198975, "loss_point": 0.6821372509002686, "loss_ref_box": 0.42318078875541687,
                 "loss_mask_focal": 0.4372676610946655, "loss_mask_dice": 0.12417011708021164,
                 "loss_mask_iou": 0.05893087387084961}),
    "map_attention": (ATTENTION_HEAD, {"loss_text": 4.179566860198975, "loss_point": 0.6594272255897522,
                                       "loss_cell": 1.8125340938568115, "loss_ref_box": 0.25352731347084045,
                                       "loss_mask_focal": 0.4337146282196045, "loss_mask_dice": 0.12445665895938873,
                                       "loss_mask_iou": 0.04630884528160095}),
}


@pytest.mark.parametrize("head", sorted(PINNED))
def test_losses_are_pinned(head):
    opts, expected = PINNED[head]
    model = tiny_model(*opts)
    model.train()
    torch.manual_seed(5)
    losses = {k: float(v) for k, v in model(make_batch()).items()}
    assert losses.keys() == expected.keys()
    for k, v in expected.items():
        assert losses[k] == pytest.approx(v, rel=1e-4), k


# --------------------------------------------------------------------------------------------------- fail fast
@pytest.mark.parametrize(
    "opts, error, message",
    [
        (("MODEL.PIXELLLM.DECODE.METHOD", "beams"), ValueError, r"decode method must be 'greedy' or 'beam' \(MODEL.PIXELLLM.DECODE.METHOD\), got 'beams'"),
        (("MODEL.PIXELLLM.DECODE.MAX_LEN", 0), ValueError, "decode option 'max_len' must be >= 1"),
        (("MODEL.PIXELLLM.LOSS.POINT_WEIGHT", -1.0), ValueError, "point_weight must be >= 0"),
        (("MODEL.PIXELLLM.MASK_HEAD.TRAIN_PROMPT", "box"), ValueError, r"TRAIN_PROMPT\) must be 'pred' or 'gt'"),
        (("MODEL.ROI_HEADS.SCORE_MODE", "caption", "MODEL.DENSECAP_ON", True), ValueError, "score mode must be 'det' or 'det_x_caption'"),
    ],
)
def test_bad_options_fail_at_build_time(opts, error, message):
    with pytest.raises(error, match=message):
        build_model(tiny_cfg(*opts), device="meta")


def test_unknown_decode_option_names_the_key():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"unknown decode option 'beams' \(did you mean 'num_beams'\?\)"):
        type(model)(**{**_kwargs(model), "decode": {"beams": 4}})
    model.eval()
    with pytest.raises(ValueError, match=r"unknown decode option 'max_length' \(did you mean 'max_len'\?\)"):
        model.inference(make_batch()[:1], decode={"max_length": 5})


def _kwargs(model):
    # the keyword arguments that rebuild `model` from its parts (the `from_config` style)
    return dict(backbone=model.backbone, prompt_encoder=model.prompt_encoder, prompt_extractor=model.prompt_extractor,
                language=model.language, location_head=model.location_head, mask_head=model.mask_head,
                tokenizer=model.tokenizer_name, image_size=model.image_size, prompts=model.prompts,
                max_context_len=model.max_context_len, max_text_len=model.max_text_len)


def test_prompts_must_cover_every_task_and_nothing_else():
    model = tiny_model()
    prompts = dict(model.prompts)
    with pytest.raises(ValueError, match=r"unknown prompt key 'REGIONS' \(did you mean 'REGION'\?\)"):
        type(model)(**{**_kwargs(model), "prompts": {**prompts, "REGIONS": "x"}})
    del prompts["REFER"]
    with pytest.raises(ValueError, match=r"no context prompt for \['REFER'\]"):
        type(model)(**{**_kwargs(model), "prompts": prompts})


def test_heads_take_only_their_own_loss_keys():
    with pytest.raises(TypeError, match="point_wieght"):
        MLPLocationHead(in_dim=8, point_wieght=1.0)


def test_a_query_that_needs_text_without_text_is_an_error():
    model = tiny_model()
    model.eval()
    refer = dict(make_batch()[1])
    del refer["target_ids"]  # before: decoded and answered with the prompt box, i.e. "the whole image"
    with pytest.raises(ValueError, match=r"inputs of task\(s\) \['refer'\] need their text in 'target_ids'"):
        model([refer])


def test_unknown_task_names_the_input():
    model = tiny_model()
    model.eval()
    x = dict(make_batch()[0], task="tracing", file_name="a.png")
    with pytest.raises(ValueError, match=r"input 0 \(a.png\): task: unknown task 'tracing'; known tasks: caption, trace"):
        model([x])


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_input_format_applies_to_array_images(fmt):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    predictor = PixelLLMPredictor(tiny_cfg("INPUT.FORMAT", fmt))
    given = rgb if fmt == "RGB" else rgb[:, :, ::-1].copy()
    reference = PixelLLMPredictor(tiny_cfg()).prepare(rgb)
    assert torch.equal(predictor.prepare(given)["image"], reference["image"])
    assert torch.equal(predictor.prepare(rgb, input_format="RGB")["image"], reference["image"])  # per call


def test_bad_input_format_fails_at_build():
    with pytest.raises(ValueError, match="INPUT.FORMAT must be 'RGB' or 'BGR', got 'RGBA'"):
        PixelLLMPredictor(tiny_cfg("INPUT.FORMAT", "RGBA"))


# ------------------------------------------------------------------------------------------- the feature cache
def test_predictor_encodes_an_image_once_for_many_prompts():
    predictor = PixelLLMPredictor(tiny_cfg())
    passes = []
    predictor.model.backbone.register_forward_hook(lambda m, i, o: passes.append(1))
    g = np.random.default_rng(1)
    image, other = (g.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(2))
    caption = predictor(image)
    region = predictor(image, task="region", boxes=[[4, 4, 30, 30]])
    refer = predictor(image, task="refer", text="the red circle")
    assert len(passes) == predictor.num_image_encodings == 1  # three prompts, one backbone pass
    predictor(other)
    assert len(passes) == predictor.num_image_encodings == 2  # another image is encoded again
    predictor(image)
    assert len(passes) == 3  # the cache holds the last image only
    predictor.set_image(other)
    predictor(other, task="region", points=[[10, 10]])
    assert len(passes) == 4
    for out, (task, kw) in zip((caption, region, refer), (("caption", {}), ("region", {"boxes": [[4, 4, 30, 30]]}),
                                                       ("refer", {"text": "the red circle"}))):
        alone = predictor.run([predictor.prepare(image, task, **kw)])[0]  # no cache: its own backbone pass
        assert out["captions"] == alone["captions"]
        assert torch.allclose(out["pred_boxes"], alone["pred_boxes"], atol=1e-5)


def test_encode_once_then_generate_and_ground():
    model = tiny_model()
    model.eval()
    batch = make_batch()
    with torch.no_grad():
        features = model.encode_images(batch)
        q = model.queries(batch)
        refer = q.select(q.flag("box_at_last_word"))
        grounded = model.ground(features, refer)
        generated = model.generate(features, q.select(q.flag("text_at_test", "generated")))
    assert [len(r["box"]) for r in grounded] == [4, 4] and all("mask_logits" in r for r in grounded)
    assert len(generated) == 2 and all(r["token_corners"].shape == (len(r["token_ids"]), 4) for r in generated)
    outputs = model.inference(batch, features=features)
    assert torch.allclose(outputs[1]["pred_boxes"], model.inference(batch)[1]["pred_boxes"])
