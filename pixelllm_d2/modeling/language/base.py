"""What the meta-architecture asks of a language model (`LANGUAGE_MODEL_REGISTRY` entries), and the text loss
they share.

A language model reads a prefix of visual tokens and context-prompt ids and produces text:
- `encode(visual_tokens (Q, V, visual_dim), context_ids (Q, C), pad_id)` -> (prefix states (Q, L, d), mask (Q, L));
- `decode(prefix, mask, decoder_input_ids (Q, t), cache=None)` -> (hidden (Q, t, d), logits (Q, t, vocab), cache);
  the input starts with the tokenizer's BOS, and `hidden` is what the location and mask heads read;
- `new_cache()` -> an empty KV cache with `reorder_cache(index)` (beam search);
- `load_weights()`, `d_model`, `vocab_size`, and `losses` below.
"""
from typing import Dict

import torch
from torch import nn

from ..losses import text_loss

__all__ = ["PrefixLM"]


class PrefixLM(nn.Module):
    """Base of the language models: owns the text loss.

    Args:
        text_weight: weight of the text loss (MODEL.PIXELLLM.LOSS.TEXT_WEIGHT).
        label_smoothing: GRiT-style label smoothing of the text loss.
    """

    def __init__(self, text_weight: float = 1.0, label_smoothing: float = 0.1):
        super().__init__()
        if text_weight < 0 or not 0 <= label_smoothing < 1:
            raise ValueError(f"text_weight must be >= 0 and label_smoothing in [0, 1), got {text_weight}, {label_smoothing}")
        self.text_weight = text_weight
        self.label_smoothing = label_smoothing

    def losses(self, logits: torch.Tensor, target_ids: torch.Tensor, rows: torch.Tensor, share: float, pad_id: int,
               eos_id: int) -> Dict[str, torch.Tensor]:
        """{"loss_text"}: the weighted, label-smoothed cross-entropy of the `rows` (Q,) bool that carry a text loss,
        times `share` (the batch share of their tasks' images); {} when no row does.

        Args:
            logits: (Q, T, V) decoder logits; target_ids: (Q, T) int64 padded with `pad_id`.
        """
        if not rows.any():
            return {}
        return {"loss_text": self.text_weight * share * text_loss(logits, target_ids, rows, self.label_smoothing, pad_id, eos_id)}
