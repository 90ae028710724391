"""The official BERT / GIT decoder family (LANGUAGE.NAME "GITDecoderLM", configs/bert/): WordPiece tokenizers
with BERT's ids, the prefix-LM attention, KV-cached decoding equal to full recomputation, a local HF BERT folder,
the paper configs' parameter counts, and the tiny config training."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pixelllm_d2.config import get_cfg
from pixelllm_d2.modeling import build_model
from pixelllm_d2.modeling.language.git import GITDecoderLM, attention_mask
from pixelllm_d2.text import build_tokenizer, wordpiece_vocab

from .tiny import REPO_CFG_DIR, TINY_BERT_CFG, make_batch, tiny_cfg, tiny_model

WORDS = ["a", "red", "circle", "##s", "left", "of", "the", "big", "square", "where", "is"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A local HF BERT folder: bert-base-uncased's special-token layout over a few words, and a 2-layer BertModel."""
    from transformers import BertConfig, BertModel

    folder = str(tmp_path_factory.mktemp("bert"))
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(wordpiece_vocab([w for w in WORDS if not w.startswith("##")]) + ["##s"]) + "\n")
    torch.manual_seed(0)
    n = len(open(os.path.join(folder, "vocab.txt")).read().split())
    BertModel(BertConfig(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=16)).save_pretrained(folder)
    return folder


def test_wordpiece_tokenizer_ids_and_words(bert_folder):
    tok = build_tokenizer(bert_folder)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.wordpiece) == (0, 100, 101, 102, True)
    ids = tok.encode("A red circles, left of the big square.")
    assert ids[-1] == 102 and 101 not in ids
    words, token_to_word = tok.group_words(ids)
    # "##s" continues its word and punctuation joins the word before it, as SentencePiece's pieces do
    assert words == ["a", "red", "circles,", "left", "of", "the", "big", "square."]
    assert token_to_word == [0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 7, -1]
    assert tok.decode(ids) == "a red circles, left of the big square."


def test_shapes_wordpiece_has_bert_layout():
    tok = build_tokenizer("shapes-wordpiece")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 101, 102)
    from pixelllm_d2.text.shapes_vocabulary import vocabulary

    ids = tok.encode(" ".join(vocabulary()))
    assert tok.unk_id not in ids  # every benchmark and prompt word is in the vocabulary


def test_attention_mask_is_prefix_lm():
    valid = torch.tensor([[True, True, False]])  # 2 visual / context tokens and one padded context token
    m = attention_mask(valid, num_text=2)[0, 0].int().tolist()
    assert m == [
        [1, 1, 0, 0, 0],  # prefix: both directions among the valid prefix, never the text
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 0, 1, 0],  # text: the valid prefix and the text up to itself
        [1, 1, 0, 1, 1],
    ]
    step = attention_mask(valid, num_text=1, past_text=2, prefix_rows=False)[0, 0].int().tolist()
    assert step == [[1, 1, 0, 1, 1, 1]]


def _lm(seed=0, **kw):
    torch.manual_seed(seed)
    return GITDecoderLM(visual_dim=12, vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, ffn_dim=32,
                        dropout=0.0, **kw).eval()


def test_text_never_reaches_the_prefix_and_padding_is_ignored():
    lm = _lm()
    g = torch.Generator().manual_seed(1)
    visual = torch.randn(2, 3, 12, generator=g)
    ctx = torch.tensor([[5, 6, 0], [7, 0, 0]])
    prefix, mask = lm.encode(visual, ctx)
    text = torch.tensor([[1, 9, 10, 11], [1, 12, 13, 14]])
    h, logits, _ = lm.decode(prefix, mask, text)
    # causal: changing token 3 leaves the states of tokens 0-2 unchanged
    h2, _, _ = lm.decode(prefix, mask, torch.cat([text[:, :3], torch.tensor([[20], [21]])], dim=1))
    torch.testing.assert_close(h[:, :3], h2[:, :3], rtol=0, atol=0)
    assert not torch.allclose(h[:, 3], h2[:, 3])
    # a padded context token's id does not matter
    prefix3 = prefix.clone()
    prefix3[1, 4] += 1.0  # another embedding at a padded context position
    h3, _, _ = lm.decode(prefix3, mask, text)
    torch.testing.assert_close(h3, h, rtol=1e-6, atol=1e-6)
    assert logits.shape == (2, 4, 50) and h.shape == (2, 4, 16)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_decoding_equals_recomputation(num_beams):
    from pixelllm_d2.modeling.language.decoding import generate

    lm = _lm(seed=3)
    g = torch.Generator().manual_seed(2)
    prefix, mask = lm.encode(torch.randn(3, 4, 12, generator=g), torch.tensor([[5, 6], [7, 0], [8, 9]]))

    def feature(h, idx):
        return h[:, :2]

    runs = [generate(lm, prefix, mask, feature, max_len=7, num_beams=num_beams, use_cache=c, pad_id=0, eos_id=2, bos_id=1)
            for c in (True, False)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    torch.testing.assert_close(runs[0].features, runs[1].features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs[0].scores, runs[1].scores, rtol=1e-5, atol=1e-5)
    assert not (runs[0].tokens == 1).any()  # BOS is never generated


def test_bert_folder_initialises_embeddings_and_layers(bert_folder):
    from transformers import BertModel

    hf = BertModel.from_pretrained(bert_folder, local_files_only=True).eval()
    lm = GITDecoderLM(visual_dim=12, vocab_size=hf.config.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                      ffn_dim=64, max_positions=24, dropout=0.0, weights=bert_folder).eval()
    output_before = lm.output.weight.clone()
    lm.load_weights()
    torch.testing.assert_close(lm.embeddings.word_embeddings.weight, hf.embeddings.word_embeddings.weight)
    # BERT has 16 positions, the decoder 24: the first 16 rows come from BERT
    torch.testing.assert_close(lm.embeddings.position_embeddings.weight[:16], hf.embeddings.position_embeddings.weight)
    torch.testing.assert_close(lm.encoder.layer[0].attention["self"]["query"].weight,
                               hf.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(lm.output.weight, output_before)  # the output layer is the decoder's own (untied)
    # the layer computes BERT's layer (up to the LayerNorm epsilons: 1e-5 / 1e-12 here, 1e-12 in BERT)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    ours, _, _ = lm.encoder.layer[0](x, torch.ones(2, 1, 5, 5, dtype=torch.bool))
    theirs = hf.encoder.layer[0](x)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_bert_folder_gives_tokenizer_and_vocabulary(bert_folder):
    cfg = tiny_cfg("MODEL.PIXELLLM.LANGUAGE.WEIGHTS", bert_folder, "MODEL.PIXELLLM.LANGUAGE.TOKENIZER", "",
                   "MODEL.PIXELLLM.LANGUAGE.D_MODEL", 32, "MODEL.PIXELLLM.LANGUAGE.D_FF", 64, config=TINY_BERT_CFG)
    torch.manual_seed(0)
    model = build_model(cfg)
    with open(os.path.join(bert_folder, "config.json")) as f:
        assert model.language.vocab_size == json.load(f)["vocab_size"] == len(model.tokenizer)
    assert model.tokenizer.bos_id == 101
    model.load_component_weights()


def test_lora_is_refused_with_the_key_to_change():
    with pytest.raises(ValueError, match=r"set MODEL.PIXELLLM.LANGUAGE.LORA.ENABLED False"):
        build_model(tiny_cfg("MODEL.PIXELLLM.LANGUAGE.LORA.ENABLED", True, config=TINY_BERT_CFG), device="meta")


def test_tiny_bert_config_trains():
    model = tiny_model(config=TINY_BERT_CFG)
    assert isinstance(model.language, GITDecoderLM)
    assert all(p.requires_grad for p in model.language.parameters())  # the official decoder trains fully
    batch = make_batch(tokenizer="shapes-wordpiece")
    assert model.decoder_inputs(batch[0]["target_ids"])[0, 0] == 101  # decoding starts at [CLS]
    model.train()
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(15):
        losses = model(batch)
        assert set(losses) == {"loss_text", "loss_point", "loss_ref_box", "loss_mask_focal", "loss_mask_dice", "loss_mask_iou"}
        total = sum(losses.values())
        first = float(total.detach()) if first is None else first
        opt.zero_grad()
        total.backward()
        assert model.language.encoder.layer[0].output["dense"].weight.grad.abs().sum() > 0
        opt.step()
    assert float(total.detach()) < 0.7 * first
    model.eval()
    out = model(batch)
    assert out[3]["words"][0] and all(w for w in out[3]["words"][0])


def _analyze(config):
    root = os.path.dirname(REPO_CFG_DIR)
    cmd = [sys.executable, os.path.join(root, "tools", "analyze_model.py"), "--config-file", os.path.join(REPO_CFG_DIR, config), "--json"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=root).stdout)


def test_paper_bert_config_counts():
    c = _analyze("bert/ln_coco_trace.yaml")["components"]
    layer = 4 * (768 * 768 + 768) + 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768) + 2 * 768
    assert c["language.encoder"] == {"total": 6 * layer, "trainable": 6 * layer}  # 42,527,232
    assert c["language.embeddings"]["total"] == 30522 * 768 + 1024 * 768 + 2 * 768
    assert c["language.output"]["total"] == 30522 * 768 + 30522  # untied
    assert c["language.visual_projection"]["total"] == 1024 * 768 + 768 + 2 * 768


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(REPO_CFG_DIR, "bert"))))
def test_every_bert_config_builds(name):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO_CFG_DIR, "bert", name))
    assert cfg.MODEL.PIXELLLM.LANGUAGE.NAME == "GITDecoderLM" and cfg.OUTPUT_DIR.startswith("output/bert/")
    model = build_model(cfg, device="meta")
    assert model.language.d_model == 768 and len(model.language.encoder.layer) == 6
