"""The official BERT-family text decoder (GIT / GRiT's `TransformerDecoderTextualHead` in the official
`modeling/text_decoder.py`) as PixelLLM's prefix language model.

One stack of post-LN BERT layers reads [visual tokens ; context prompt ; text]. The prefix (visual tokens and
context) attends to itself in both directions and never to the text; the text attends to the whole prefix and
causally to itself. Official sizes ("git-base"): width 768, 6 layers, 12 heads, FFN 3072, 1024 positions,
vocabulary 30522 (bert-base-uncased WordPiece: BOS [CLS] 101, EOS [SEP] 102, pad 0).

Kept from the official code: the visual tokens get Linear + LayerNorm(eps 1e-5) and no position; the context and the
text share the word + position embedding (positions restart at 0 for each) with LayerNorm(eps 1e-8) and dropout; a
layer is attention -> dropout -> residual -> LayerNorm(eps 1e-5), then FFN (exact GELU) -> dropout -> residual ->
LayerNorm(eps 1e-12); the output layer is not tied to the word embedding; the whole decoder trains (no LoRA).
Parameters are named as HF `BertModel`'s, so a local BERT folder can initialise the embeddings and layers
(`LANGUAGE.WEIGHTS`; the official release starts this decoder from its own pre-training stage instead).
"""
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn

from ...config import configurable
from ..build import LANGUAGE_MODEL_REGISTRY
from ..weights import load_hf_folder_state_dict, load_into
from .base import PrefixLM

__all__ = ["GITDecoderLM", "GIT_PRESETS", "GITCache"]

logger = logging.getLogger(__name__)

GIT_PRESETS: Dict[str, dict] = {
    "git-base": dict(hidden_size=768, num_layers=6, num_heads=12, ffn_dim=3072),
}


class _Embeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int, dropout: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        # (Q, T) ids at positions start .. start + T - 1 -> (Q, T, H)
        end = start + ids.shape[1]
        if end > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {end} tokens exceeds the decoder's {self.position_embeddings.num_embeddings} positions")
        pos = torch.arange(start, end, device=ids.device)
        return self.dropout(self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos)))


class _Layer(nn.Module):
    """A post-LN BERT layer; `forward` also returns its keys and values (for the cache)."""

    attention_implementation = "sdpa"  # always: `attention.attention_paths` reports it

    def __init__(self, hidden_size: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of {num_heads} heads")
        self.num_heads, self.dropout_p = num_heads, dropout
        self.attention = nn.ModuleDict({
            "self": nn.ModuleDict({n: nn.Linear(hidden_size, hidden_size) for n in ("query", "key", "value")}),
            "output": nn.ModuleDict({"dense": nn.Linear(hidden_size, hidden_size), "LayerNorm": nn.LayerNorm(hidden_size, eps=1e-5)}),
        })
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(hidden_size, ffn_dim)})
        self.output = nn.ModuleDict({"dense": nn.Linear(ffn_dim, hidden_size), "LayerNorm": nn.LayerNorm(hidden_size, eps=1e-12)})
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (Q, heads, L, head_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        att = self.attention["self"]
        q, k, v = (self._heads(att[n](x)) for n in ("query", "key", "value"))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        out = self.attention["output"]
        x = out["LayerNorm"](x + self.dropout(out["dense"](a.transpose(1, 2).flatten(2))))
        ffn = self.output["dense"](F.gelu(self.intermediate["dense"](x)))
        return self.output["LayerNorm"](x + self.dropout(ffn)), k, v


class _Encoder(nn.Module):  # only to give the layers HF BERT's names (encoder.layer.<i>)
    def __init__(self, layers: List[_Layer]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class GITCache:
    """Keys and values of every layer for the prefix and the text decoded so far (the prefix never attends to the
    text, so its keys and values are computed once)."""

    def __init__(self):
        self.keys: List[torch.Tensor] = []
        self.values: List[torch.Tensor] = []
        self.prefix_valid: Optional[torch.Tensor] = None  # (Q, P) bool
        self.text_len = 0

    def reorder_cache(self, index: torch.Tensor) -> None:
        """Keep rows `index` (Q',) of every tensor (beam search)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.prefix_valid = self.prefix_valid.index_select(0, index)


def attention_mask(prefix_valid: torch.Tensor, num_text: int, past_text: int = 0, prefix_rows: bool = True) -> torch.Tensor:
    """(Q, 1, rows, P + past_text + num_text) bool, True where attending is allowed: prefix rows see the valid prefix
    keys only; the text row at position i sees the valid prefix keys and the text keys <= i. `rows` is P + num_text
    with `prefix_rows`, else num_text (the new text rows of a cached step).

    Args:
        prefix_valid: (Q, P) bool, False at padded context tokens.
    """
    p, dev = prefix_valid.shape[1], prefix_valid.device
    total = past_text + num_text
    text = torch.cat([torch.ones(num_text, p, dtype=torch.bool, device=dev),
                      torch.ones(num_text, total, dtype=torch.bool, device=dev).tril(diagonal=past_text)], dim=1)
    if prefix_rows:
        prefix = torch.cat([torch.ones(p, p, dtype=torch.bool, device=dev), torch.zeros(p, total, dtype=torch.bool, device=dev)], dim=1)
        text = torch.cat([prefix, text], dim=0)
    keys = torch.cat([prefix_valid, torch.ones(prefix_valid.shape[0], total, dtype=torch.bool, device=dev)], dim=1)
    return (text[None] & keys[:, None, :])[:, None]


@LANGUAGE_MODEL_REGISTRY.register()
class GITDecoderLM(PrefixLM):
    """
    Args:
        visual_dim: width of the incoming visual tokens.
        vocab_size: output vocabulary (bert-base-uncased: 30522).
        hidden_size, num_layers, num_heads, ffn_dim, max_positions, dropout: the decoder's sizes (`GIT_PRESETS`).
        weights: local HF BERT folder that `load_weights()` reads into the embeddings and layers ("" = none).
        freeze: freeze everything but the visual projection (the official decoder trains fully: False).
        text_weight, label_smoothing: the text loss (`PrefixLM.losses`).
        grad_checkpointing: recompute each layer's activations in the backward pass of a training pass.
    """

    @configurable
    def __init__(self, *, visual_dim: int, vocab_size: int = 30522, hidden_size: int = 768, num_layers: int = 6,
                 num_heads: int = 12, ffn_dim: int = 3072, max_positions: int = 1024, dropout: float = 0.1,
                 weights: str = "", freeze: bool = False, text_weight: float = 1.0, label_smoothing: float = 0.1,
                 grad_checkpointing: bool = False):
        super().__init__(text_weight, label_smoothing)
        self.d_model, self.vocab_size, self.weights = hidden_size, vocab_size, weights
        self.grad_checkpointing = grad_checkpointing
        self.visual_projection = nn.Sequential(nn.Linear(visual_dim, hidden_size), nn.LayerNorm(hidden_size, eps=1e-5))
        self.embeddings = _Embeddings(vocab_size, hidden_size, max_positions, dropout)
        self.encoder = _Encoder([_Layer(hidden_size, num_heads, ffn_dim, dropout) for _ in range(num_layers)])
        self.output = nn.Linear(hidden_size, vocab_size)
        for m in self.modules():  # BERT's initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        if freeze:
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("visual_projection."))

    @classmethod
    def from_config(cls, cfg, visual_dim: int, vocab_size: int):
        lang = cfg.MODEL.PIXELLLM.LANGUAGE
        if lang.LORA.ENABLED:
            raise ValueError("LANGUAGE.NAME GITDecoderLM trains the whole decoder, as the official BERT family: set "
                             "MODEL.PIXELLLM.LANGUAGE.LORA.ENABLED False (LoRA is implemented for T5PrefixLM)")
        if lang.ARCH == "custom":
            sizes = dict(hidden_size=lang.D_MODEL, num_layers=lang.NUM_DECODER_LAYERS, num_heads=lang.NUM_HEADS, ffn_dim=lang.D_FF)
        elif lang.ARCH in GIT_PRESETS:
            sizes = GIT_PRESETS[lang.ARCH]
        else:
            raise ValueError(f"LANGUAGE.ARCH {lang.ARCH!r} is not a GITDecoderLM architecture; choose one of "
                             f"{sorted(GIT_PRESETS)} or 'custom' (D_MODEL, NUM_DECODER_LAYERS, NUM_HEADS, D_FF)")
        if vocab_size == 0:  # LANGUAGE.WEIGHTS names a BERT folder: its vocabulary
            with open(os.path.join(lang.WEIGHTS, "config.json")) as f:
                vocab_size = int(json.load(f)["vocab_size"])
        return dict(visual_dim=visual_dim, vocab_size=vocab_size, dropout=lang.DROPOUT, weights=lang.WEIGHTS,
                    freeze=lang.FREEZE, text_weight=cfg.MODEL.PIXELLLM.LOSS.TEXT_WEIGHT,
                    label_smoothing=cfg.MODEL.PIXELLLM.LOSS.LABEL_SMOOTHING, grad_checkpointing=lang.GRAD_CHECKPOINTING,
                    **sizes)

    # ------------------------------------------------------------------------------------------------ weights
    def load_weights(self) -> None:
        """Initialise the embeddings and layers from the HF BERT folder named at construction (if any)."""
        if self.weights:
            self.load_bert_folder(self.weights)

    def load_bert_folder(self, folder: str) -> None:
        """Load a local HF BERT checkpoint (BertModel / BertFor*: keys with or without "bert."): word and position
        embeddings (the first rows when BERT has fewer positions), and the first `num_layers` layers. The pooler,
        token-type embeddings, extra layers and MLM head are skipped; the visual projection and the output layer
        keep their initialisation. Shapes that do not fit raise `CheckpointMismatchError`."""
        own = self.state_dict()
        state = {}
        for key, value in load_hf_folder_state_dict(folder).items():
            key = key[len("bert."):] if key.startswith("bert.") else key
            if key not in own:
                continue
            if key == "embeddings.position_embeddings.weight" and value.shape[0] < own[key].shape[0]:
                value = torch.cat([value, own[key][value.shape[0]:]])
            state[key] = value
        skipped = ("visual_projection.", "output.")
        load_into(self, state, f"BERT weights {folder}", ignore=skipped)

    # ------------------------------------------------------------------------------------------------ forward
    def encode(self, visual_tokens: torch.Tensor, context_ids: torch.Tensor, pad_id: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            visual_tokens: (Q, V, visual_dim).
            context_ids: (Q, C) int64 context-prompt ids, padded with `pad_id` (C may be 0).
        Returns:
            prefix: (Q, V + C, hidden) projected visual tokens and embedded context (the layers run in `decode`).
            mask: (Q, V + C) int64, 1 = a real token.
        """
        vis = self.visual_projection(visual_tokens)
        ctx = self.embeddings(context_ids).to(vis.dtype)
        mask = torch.cat([torch.ones(vis.shape[:2], dtype=torch.long, device=vis.device), (context_ids != pad_id).long()], dim=1)
        return torch.cat([vis, ctx], dim=1), mask

    def decode(self, prefix: torch.Tensor, prefix_mask: torch.Tensor, decoder_input_ids: torch.Tensor,
               cache: Optional[GITCache] = None) -> Tuple[torch.Tensor, torch.Tensor, Optional[GITCache]]:
        """
        Args:
            prefix, prefix_mask: `encode`'s output, (Q, P, hidden) and (Q, P).
            decoder_input_ids: (Q, t) text ids (starting with BOS unless continuing a cache).
            cache: None for a full pass; a `GITCache` (from `new_cache`) to decode incrementally (updated in place).
        Returns:
            hidden: (Q, t, hidden) the last layer's states at the text positions.
            logits: (Q, t, vocab).
            cache: the updated cache (None when none was given).
        """
        t = decoder_input_ids.shape[1]
        if cache is not None and cache.keys:
            x = self.embeddings(decoder_input_ids, start=cache.text_len).to(prefix.dtype)
            mask = attention_mask(cache.prefix_valid, t, cache.text_len, prefix_rows=False)
            for i, layer in enumerate(self.encoder.layer):
                x, cache.keys[i], cache.values[i] = layer(x, mask, (cache.keys[i], cache.values[i]))
            cache.text_len += t
            hidden = x
        else:
            p = prefix.shape[1]
            x = torch.cat([prefix, self.embeddings(decoder_input_ids).to(prefix.dtype)], dim=1)
            mask = attention_mask(prefix_mask.bool(), t)
            recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled() and cache is None
            for layer in self.encoder.layer:
                if recompute:
                    x, k, v = torch.utils.checkpoint.checkpoint(layer, x, mask, use_reentrant=False)
                else:
                    x, k, v = layer(x, mask)
                if cache is not None:
                    cache.keys.append(k)
                    cache.values.append(v)
            if cache is not None:
                cache.prefix_valid, cache.text_len = prefix_mask.bool(), t
            hidden = x[:, p:]
        return hidden, self.output(hidden), cache

    def new_cache(self) -> GITCache:
        """An empty KV cache for incremental decoding."""
        return GITCache()
