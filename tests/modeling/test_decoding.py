import pytest
import torch

from pixelllm_d2.modeling.language.decoding import generate

from .tiny import ATTENTION_HEAD, encode, tiny_model


def _encoded(model, n=3, seed=0):
    torch.manual_seed(seed)
    visual = torch.randn(n, model.prompt_extractor.num_queries, model.prompt_extractor.out_dim) * 3
    ctx = torch.stack([encode("A long image caption:")] * n)
    return model.language.encode(visual, ctx)


HEADS = {"mlp": (), "map_attention": ATTENTION_HEAD}


def _feature_fn(model, wh, seed=0):
    # two images' fused maps; queries 0 and 1-2 read different ones (map-reading heads only)
    g = torch.Generator().manual_seed(seed)
    fmap = torch.randn(2, model.backbone.out_channels, *model.backbone.grid, generator=g)
    index = torch.tensor([0, 1, 1])
    return lambda h, q: model.location_head.locate(h[:, None], wh[q], fmap, index[q])[:, 0], fmap, index


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_kv_cache_gives_the_same_result_as_full_recomputation(num_beams, head):
    model = tiny_model("MODEL.PIXELLLM.DECODE.MAX_LEN", "12", *HEADS[head])
    model.eval()
    enc_h, enc_m = _encoded(model)
    wh = torch.tensor([[64.0, 48.0]] * 3)
    args = dict(max_len=12, num_beams=num_beams, vocab_limit=len(model.tokenizer))
    fn = _feature_fn(model, wh)[0]
    cached = generate(model.language, enc_h, enc_m, fn, use_cache=True, **args)
    full = generate(model.language, enc_h, enc_m, fn, use_cache=False, **args)
    assert torch.equal(cached.tokens, full.tokens)
    assert torch.allclose(cached.features, full.features, atol=1e-5)
    assert torch.allclose(cached.scores, full.scores, atol=1e-5)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_locations_collected_while_decoding_equal_a_teacher_forced_pass(num_beams, head):
    model = tiny_model(*HEADS[head])
    model.eval()
    enc_h, enc_m = _encoded(model)
    wh = torch.tensor([[64.0, 48.0]] * 3)
    fn, fmap, index = _feature_fn(model, wh)
    gen = generate(model.language, enc_h, enc_m, fn, max_len=10, num_beams=num_beams, vocab_limit=len(model.tokenizer))
    dec_in = torch.nn.functional.pad(gen.tokens, (1, 0), value=0)
    hidden, _, _ = model.language.decode(enc_h, enc_m, dec_in)
    forced = model.location_head.locate(hidden, wh, fmap, index)[:, 1:]  # token j is the decoder input at position j + 1
    real = (gen.tokens != 0) & (gen.tokens != 1)
    assert real.any()
    assert torch.allclose(gen.features[real], forced[real], atol=1e-4)


def test_greedy_never_repeats_the_previous_token_and_eos_is_sticky():
    model = tiny_model()
    model.eval()
    enc_h, enc_m = _encoded(model, n=4, seed=3)
    gen = generate(model.language, enc_h, enc_m, lambda h, q: h[:, :2], max_len=16, vocab_limit=len(model.tokenizer))
    toks = gen.tokens
    real = toks[:, 1:] != 0
    assert not ((toks[:, 1:] == toks[:, :-1]) & real).any()
    for row in toks.tolist():
        if 1 in row:
            assert all(t == 0 for t in row[row.index(1) + 1 :])
        assert 0 not in row[: (row.index(1) if 1 in row else len(row))]


def test_max_len_one_and_invalid_arguments():
    model = tiny_model()
    model.eval()
    enc_h, enc_m = _encoded(model, n=2)
    gen = generate(model.language, enc_h, enc_m, lambda h, q: h[:, :4], max_len=1, vocab_limit=len(model.tokenizer))
    assert gen.tokens.shape == (2, 1) and gen.features.shape == (2, 1, 4)
    with pytest.raises(ValueError, match="max_len"):
        generate(model.language, enc_h, enc_m, lambda h, q: h, max_len=0)
