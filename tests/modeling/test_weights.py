"""Round trips: small checkpoints written by the upstream libraries' own classes (segment_anything, timm,
transformers, peft) load through our loaders and give identical outputs."""
import logging
import os
from functools import partial

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pixelllm_d2.modeling import build_model
from pixelllm_d2.modeling.weights import load_into, load_state_dict_file

from .tiny import tiny_cfg


def upstream_sam(embed_dim=32, img_size=64):
    torch.manual_seed(1)
    enc = ImageEncoderViT(
        img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=2, num_heads=2, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
        global_attn_indexes=[1], window_size=2, out_chans=32,
    )
    grid = img_size // 16
    pe = PromptEncoder(embed_dim=32, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=16)
    dec = MaskDecoder(
        num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=256, num_heads=8),
        transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    sam = Sam(image_encoder=enc, prompt_encoder=pe, mask_decoder=dec)
    for p in sam.parameters():  # non-trivial values everywhere (SAM initialises some tables at zero)
        p.data.add_(torch.randn_like(p) * 0.02)
    return sam.eval()


def test_sam_checkpoint_round_trip(tmp_path):
    sam = upstream_sam()
    path = str(tmp_path / "sam_tiny.pth")
    torch.save(sam.state_dict(), path)
    # eager attention, as segment_anything's: bit-identical (SDPA == eager is tested in test_precision_attention.py)
    model = build_model(tiny_cfg("MODEL.PIXELLLM.SAM.CHECKPOINT", path, "MODEL.PIXELLLM.ATTENTION", "eager")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.backbone.sam(x), sam.image_encoder(x))
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0]])
        assert torch.equal(model.prompt_encoder.embed_boxes(boxes), sam.prompt_encoder._embed_boxes(boxes))
        emb = torch.randn(1, 32, 4, 4)
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        pe = sam.prompt_encoder.get_dense_pe()
        ours = model.mask_head.decoder(emb, pe, sparse, dense, multimask_output=False)
        theirs = sam.mask_decoder(emb, pe, sparse, dense, multimask_output=False)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def _jax_resize_weights(n_in: int, n_out: int, kernel) -> torch.Tensor:
    """(n_out, n_in) weights of jax.image.resize (antialias=True, the default): the kernel centred on each output
    sample, widened by n_in / n_out when downsampling, normalised to sum 1."""
    scale = n_out / n_in
    widen = max(1.0 / scale, 1.0)
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) / scale - 0.5
        for j in range(n_in):
            w[i, j] = kernel((j - centre) / widen)
    return w / w.sum(dim=1, keepdim=True)


def _keys_cubic(t, a=-0.5):  # jax.image's "cubic"
    t = abs(t)
    return (a + 2) * t**3 - (a + 3) * t**2 + 1 if t <= 1 else a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def test_sam_checkpoint_at_another_resolution_is_resized_as_the_official(tmp_path):
    sam = upstream_sam(img_size=128)  # as SAM's 1024 px checkpoints are used at 384 px
    path = str(tmp_path / "sam_128.pth")
    torch.save(sam.state_dict(), path)
    model = build_model(tiny_cfg("MODEL.PIXELLLM.SAM.CHECKPOINT", path)).eval()
    enc = model.backbone.sam
    # the official resizes at run time with jax.image.resize: bicubic 8 -> 4 for pos_embed, linear 15 -> 7 for rel-pos
    wb = _jax_resize_weights(8, 4, _keys_cubic)
    want = torch.einsum("ij,bjkc,lk->bilc", wb, sam.image_encoder.pos_embed.double(), wb)
    torch.testing.assert_close(enc.pos_embed.double(), want, rtol=0, atol=1e-6)
    wl = _jax_resize_weights(15, 7, lambda t: max(0.0, 1 - abs(t)))
    torch.testing.assert_close(enc.blocks[1].attn.rel_pos_h.double(), wl @ sam.image_encoder.blocks[1].attn.rel_pos_h.double(),
                               rtol=0, atol=1e-6)
    assert enc.blocks[1].attn.rel_pos_h.shape == (7, 16)  # global block: 2 * 4 - 1 positions
    assert torch.equal(enc.blocks[0].attn.rel_pos_h, sam.image_encoder.blocks[0].attn.rel_pos_h)  # windowed: unchanged
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, 32, 4, 4)


def test_sam_checkpoint_of_the_wrong_shape_names_the_key(tmp_path):
    sam = upstream_sam(embed_dim=48)
    path = str(tmp_path / "sam_wide.pth")
    torch.save(sam.state_dict(), path)
    with pytest.raises(ValueError, match=r"SAM image encoder.*have another shape than in the model.*pos_embed \(1, 4, 4, 48\) \(model: \(1, 4, 4, 32\)\)"):
        build_model(tiny_cfg("MODEL.PIXELLLM.SAM.CHECKPOINT", path))


def test_a_file_that_is_not_a_sam_checkpoint_is_refused(tmp_path):
    path = str(tmp_path / "other.safetensors")
    save_file({"backbone.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a SAM checkpoint"):
        build_model(tiny_cfg("MODEL.PIXELLLM.SAM.CHECKPOINT", path))


class _Payload:
    pass


def test_torch_files_are_read_without_unpickling_objects(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"w": torch.zeros(1), "obj": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict_file(path)


@pytest.mark.parametrize("with_head", [False, True])
def test_eva02_timm_checkpoint_round_trip(tmp_path, with_head):
    import timm

    torch.manual_seed(2)
    ref = timm.create_model(
        "eva02_tiny_patch14_224", pretrained=False, img_size=64, num_classes=10 if with_head else 0,
        embed_dim=32, depth=2, num_heads=2, patch_size=16,
    ).eval()
    path = str(tmp_path / "eva.safetensors")
    save_file(ref.state_dict(), path)
    model = build_model(tiny_cfg("MODEL.PIXELLLM.EVA02.CHECKPOINT", path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = ref.fc_norm(ref.forward_features(x)[:, 1:])
        want = tokens.transpose(1, 2).reshape(2, 32, 4, 4)
        assert torch.allclose(model.backbone.eva02(x), want, atol=1e-6)


def _hf_tiny_t5(vocab=128, seed=3):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )
    return T5ForConditionalGeneration(config).eval()


def _compare_decoders(model, reference, steps=5):
    from transformers.modeling_outputs import BaseModelOutput

    torch.manual_seed(0)
    enc = torch.randn(2, 7, 32)
    mask = torch.ones(2, 7, dtype=torch.long)
    dec_in = torch.randint(2, 50, (2, steps))
    with torch.no_grad():
        _, ours, _ = model.language.decode(enc, mask, dec_in)
        theirs = reference(encoder_outputs=BaseModelOutput(last_hidden_state=enc), attention_mask=mask, decoder_input_ids=dec_in).logits
    return ours, theirs


def test_hf_t5_folder_round_trip(tmp_path):
    ref = _hf_tiny_t5()
    ref.save_pretrained(str(tmp_path / "t5"))
    model = build_model(tiny_cfg("MODEL.PIXELLLM.LANGUAGE.WEIGHTS", str(tmp_path / "t5"), "MODEL.PIXELLLM.LANGUAGE.TOKENIZER", "shapes")).eval()
    ours, theirs = _compare_decoders(model, ref)
    assert torch.allclose(ours, theirs, atol=1e-5)
    with torch.no_grad():
        emb = torch.randn(1, 5, 32)
        assert torch.allclose(model.language.base.encoder(inputs_embeds=emb).last_hidden_state, ref.encoder(inputs_embeds=emb).last_hidden_state, atol=1e-6)


def test_untied_t5_checkpoint_keeps_its_own_output_head(tmp_path):
    # T5 v1.1 / Flan-T5 checkpoints store an lm_head distinct from the embeddings (transformers 5 ties them).
    ref = _hf_tiny_t5()
    folder = tmp_path / "t5"
    ref.save_pretrained(str(folder))
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    head = torch.randn_like(state["shared.weight"])
    state["lm_head.weight"] = head
    save_file(state, str(folder / "model.safetensors"))
    model = build_model(tiny_cfg("MODEL.PIXELLLM.LANGUAGE.WEIGHTS", str(folder), "MODEL.PIXELLLM.LANGUAGE.TOKENIZER", "shapes")).eval()
    base = model.language.base
    assert torch.equal(base.lm_head.weight, head) and torch.equal(base.shared.weight, state["shared.weight"])
    enc, mask = torch.randn(1, 4, 32), torch.ones(1, 4, dtype=torch.long)
    dec_in = torch.tensor([[0, 5, 9]])
    with torch.no_grad():
        hidden, logits, _ = model.language.decode(enc, mask, dec_in)
    assert torch.allclose(logits, hidden @ head.t(), atol=1e-5)


def test_peft_adapter_round_trip(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = _hf_tiny_t5()
    base.save_pretrained(str(tmp_path / "base"))
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=r".*(SelfAttention|EncDecAttention)\.(q|v)$")
    )
    torch.manual_seed(5)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # peft starts B at zero; make the adapter matter
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    assert os.path.isfile(tmp_path / "adapter" / "adapter_model.safetensors")
    model = build_model(
        tiny_cfg(
            "MODEL.PIXELLLM.LANGUAGE.WEIGHTS", str(tmp_path / "base"),
            "MODEL.PIXELLLM.LANGUAGE.TOKENIZER", "shapes",
            "MODEL.PIXELLLM.LANGUAGE.LORA.ADAPTER", str(tmp_path / "adapter"),
        )
    ).eval()
    ours, theirs = _compare_decoders(model, peft_model.eval())
    assert torch.allclose(ours, theirs, atol=1e-5)
    no_adapter = build_model(
        tiny_cfg("MODEL.PIXELLLM.LANGUAGE.WEIGHTS", str(tmp_path / "base"), "MODEL.PIXELLLM.LANGUAGE.TOKENIZER", "shapes")
    ).eval()
    plain, _ = _compare_decoders(no_adapter, peft_model)
    assert not torch.allclose(plain, theirs, atol=1e-3)
    # and back: our adapter saved in PEFT's format loads into peft
    model.language.save_adapter(str(tmp_path / "ours"))
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(_hf_tiny_t5(), str(tmp_path / "ours")).eval()
    _, again = _compare_decoders(model, reloaded)
    assert torch.allclose(ours, again, atol=1e-5)


def test_adapter_with_another_rank_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(_hf_tiny_t5(), LoraConfig(r=2, lora_alpha=8, target_modules=["q", "v"]))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    with pytest.raises(ValueError, match="r=2"):
        build_model(tiny_cfg("MODEL.PIXELLLM.LANGUAGE.LORA.ADAPTER", str(tmp_path / "adapter")))


def test_tied_parameters_loaded_under_one_name_are_not_missing(caplog):
    # transformers ties T5's embed_tokens / lm_head to shared.weight; files store the tensor under one name
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(3, 3, bias=False)
            self.head = nn.Linear(3, 3, bias=False)
            self.head.weight = self.shared.weight
            self.out = nn.Linear(3, 1)

    torch.manual_seed(0)
    src, dst = Tied(), Tied()
    state = {"shared.weight": src.shared.weight.detach().clone(), "out.weight": src.out.weight.detach().clone()}
    with caplog.at_level(logging.WARNING, logger="pixelllm_d2"):
        missing, unexpected = load_into(dst, state, "tied.safetensors")
    assert missing == ["out.bias"] and unexpected == []
    assert torch.equal(dst.head.weight, src.shared.weight)
    assert "tied.safetensors" in caplog.text and "out.bias" in caplog.text and "head.weight" not in caplog.text
