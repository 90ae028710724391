"""Batched greedy and beam-search decoding with a KV cache, collecting a per-token feature (PixelLLM: the location
head's corner points) from the decoder state in which each generated token is the input — the same state a
teacher-forced pass would give, so no second pass is needed.

`use_cache=False` recomputes the whole prefix at every step, as the official decoder does; it exists to measure the
cache's speed-up and to test that both give the same result.
"""
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["Generated", "generate"]

FeatureFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Generated:
    """tokens: (Q, L) int64 generated ids, EOS included; positions after EOS hold pad.
    features: (Q, L, F) feature of each generated token (zeros for EOS and pad).
    scores: (Q,) greedy: mean log-prob of the generated tokens (EOS included); beam: the length-normalised score."""

    tokens: torch.Tensor
    features: torch.Tensor
    scores: torch.Tensor


def _step(lm, enc_hidden, enc_mask, inputs, cache):
    # One decoder step: with a cache only the newest token is fed; without one the whole prefix is recomputed.
    if cache is not None:
        hidden, logits, cache = lm.decode(enc_hidden, enc_mask, inputs[:, -1:], cache)
    else:
        hidden, logits, _ = lm.decode(enc_hidden, enc_mask, inputs)
    return hidden[:, -1], logits[:, -1].float(), cache


@torch.no_grad()
def generate(
    lm,
    enc_hidden: torch.Tensor,
    enc_mask: torch.Tensor,
    feature_fn: FeatureFn,
    *,
    max_len: int = 40,
    num_beams: int = 1,
    length_penalty: float = 0.6,
    no_immediate_repeat: bool = True,
    use_cache: bool = True,
    pad_id: int = 0,
    eos_id: int = 1,
    bos_id: int = None,
    vocab_limit: int = 0,
) -> Generated:
    """Decode every row of `enc_hidden` in one batch.

    Args:
        lm: a language model with `decode(enc_hidden, enc_mask, decoder_input_ids, cache)` and `new_cache()`
            (modeling/language/base.py).
        enc_hidden: (Q, L, d) encoder states; enc_mask: (Q, L).
        feature_fn: (hidden (N, d), query_index (N,)) -> (N, F), applied to the state where a token is the input.
        max_len: maximum generated tokens, EOS included.
        num_beams: 1 = greedy; > 1 = beam search with length penalty ((5 + L) / 6) ** length_penalty.
        no_immediate_repeat: greedy only: the previous token cannot be emitted again (GRiT's trick).
        use_cache: KV cache (True) or full recomputation each step (the official scheme).
        pad_id, eos_id, bos_id: the tokenizer's ids; decoding starts from BOS (None: pad, T5's start token).
        vocab_limit: ids >= this are never generated (the model's vocabulary is padded past the tokenizer's).
    """
    bos_id = pad_id if bos_id is None else bos_id
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    def step(inputs, cache):
        h, logits, cache = _step(lm, enc_hidden_k, enc_mask_k, inputs, cache)
        if vocab_limit:
            logits[:, vocab_limit:] = float("-inf")
        logits[:, [pad_id, bos_id]] = float("-inf")  # never outputs
        return h, logits, cache

    if num_beams > 1:
        enc_hidden_k = enc_hidden.repeat_interleave(num_beams, dim=0)
        enc_mask_k = enc_mask.repeat_interleave(num_beams, dim=0)
        return _beam_search(lm, step, enc_hidden.shape[0], enc_hidden.device, feature_fn, max_len, num_beams, length_penalty, use_cache, pad_id, eos_id, bos_id)
    enc_hidden_k, enc_mask_k = enc_hidden, enc_mask
    return _greedy(lm, step, enc_hidden.shape[0], enc_hidden.device, feature_fn, max_len, no_immediate_repeat, use_cache, pad_id, eos_id, bos_id)


def _greedy(lm, step_fn, q, dev, feature_fn, max_len, no_immediate_repeat, use_cache, pad_id, eos_id, bos_id):
    qidx = torch.arange(q, device=dev)
    cache = lm.new_cache() if use_cache else None
    inputs = torch.full((q, 1), bos_id, dtype=torch.long, device=dev)
    done = torch.zeros(q, dtype=torch.bool, device=dev)
    logp_sum = torch.zeros(q, device=dev)
    count = torch.zeros(q, device=dev)
    feats = []
    for step in range(max_len):
        h, logits, cache = step_fn(inputs, cache)
        f = feature_fn(h, qidx)
        if step > 0:
            feats.append(f)
        else:
            width = f.shape[-1]  # BOS's own feature is not a token's; only its width is kept
        if no_immediate_repeat:
            prev = inputs[:, -1:]
            logits.scatter_(1, prev, logits.gather(1, prev).clamp(max=-1e4))
        logp = F.log_softmax(logits, dim=-1)
        nxt = logp.argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        logp_sum += torch.where(done, torch.zeros_like(logp_sum), logp.gather(1, nxt[:, None])[:, 0])
        count += (~done).float()
        done |= nxt == eos_id
        inputs = torch.cat([inputs, nxt[:, None]], dim=1)
        if done.all():
            break
    else:
        # max_len reached without EOS somewhere: one more step gives the last token's feature.
        h, _, _ = step_fn(inputs, cache)
        feats.append(feature_fn(h, qidx))
    tokens = inputs[:, 1:]
    features = _stack_features(feats, tokens, width, eos_id, pad_id)
    return Generated(tokens=tokens, features=features, scores=logp_sum / count.clamp(min=1))


def _stack_features(feats, tokens, width, eos_id, pad_id):
    # feats[i] belongs to tokens[:, i]; the last token (EOS) may have none.
    length = tokens.shape[1]
    if not feats:  # every row ended at the first step
        return torch.zeros(tokens.shape[0], length, width, device=tokens.device)
    features = torch.stack(feats, dim=1)
    if features.shape[1] < length:
        pad = features.new_zeros(features.shape[0], length - features.shape[1], features.shape[2])
        features = torch.cat([features, pad], dim=1)
    keep = (tokens != eos_id) & (tokens != pad_id)
    return features * keep[..., None].to(features.dtype)


def _beam_search(lm, step_fn, q, dev, feature_fn, max_len, k, alpha, use_cache, pad_id, eos_id, bos_id):
    n = q * k
    qidx = torch.arange(q, device=dev).repeat_interleave(k)
    cache = lm.new_cache() if use_cache else None
    neg_inf = float("-inf")

    def lp(length):
        return ((5.0 + length) / 6.0) ** alpha

    inputs = torch.full((n, 1), bos_id, dtype=torch.long, device=dev)
    alive_scores = torch.full((q, k), neg_inf, device=dev)
    alive_scores[:, 0] = 0.0  # only one distinct beam at the start
    alive_feats = None  # (n, t, F)
    fin_tokens = torch.full((q, k, max_len), pad_id, dtype=torch.long, device=dev)
    fin_feats = None
    fin_scores = torch.full((q, k), neg_inf, device=dev)

    for step in range(max_len):
        h, logits, cache = step_fn(inputs, cache)
        if step > 0:
            f = feature_fn(h, qidx)[:, None]
            alive_feats = f if alive_feats is None else torch.cat([alive_feats, f], dim=1)
        if fin_feats is None:
            width = feature_fn(h[:1], qidx[:1]).shape[-1]
            fin_feats = torch.zeros(q, k, max_len, width, device=dev)
        logp = F.log_softmax(logits, dim=-1)
        vocab = logp.shape[-1]
        cand = (alive_scores.reshape(n, 1) + logp).reshape(q, k * vocab)
        top_v, top_i = cand.topk(2 * k, dim=1)
        parent = top_i // vocab  # (q, 2k) beam within the item
        tok = top_i % vocab
        flat_parent = parent + torch.arange(q, device=dev)[:, None] * k
        is_eos = tok == eos_id
        length = step + 1
        # Finished candidates: parent's tokens + EOS, scored with the length penalty.
        prev_tokens = inputs[:, 1:][flat_parent]  # (q, 2k, step)
        cand_tokens = torch.full((q, 2 * k, max_len), pad_id, dtype=torch.long, device=dev)
        cand_tokens[:, :, :step] = prev_tokens
        cand_tokens[:, :, step] = eos_id
        cand_feats = torch.zeros(q, 2 * k, max_len, fin_feats.shape[-1], device=dev)
        if alive_feats is not None:
            cand_feats[:, :, :step] = alive_feats[flat_parent]
        cand_scores = torch.where(is_eos, top_v / lp(length), torch.full_like(top_v, neg_inf))
        all_scores = torch.cat([fin_scores, cand_scores], dim=1)
        best = all_scores.topk(k, dim=1).indices
        fin_scores = all_scores.gather(1, best)
        fin_tokens = torch.cat([fin_tokens, cand_tokens], dim=1)[torch.arange(q)[:, None], best]
        fin_feats = torch.cat([fin_feats, cand_feats], dim=1)[torch.arange(q)[:, None], best]
        # Alive beams: the k best non-EOS candidates.
        alive_v = torch.where(is_eos, torch.full_like(top_v, neg_inf), top_v)
        keep_v, keep = alive_v.topk(k, dim=1)
        src = flat_parent.gather(1, keep).reshape(n)
        new_tok = tok.gather(1, keep).reshape(n, 1)
        alive_scores = keep_v
        inputs = torch.cat([inputs[src], new_tok], dim=1)
        if alive_feats is not None:
            alive_feats = alive_feats[src]
        if cache is not None:
            cache.reorder_cache(src)
        # Stop once no alive beam can beat the worst kept finished one (scores only fall as beams grow).
        best_alive = alive_scores.max(dim=1).values / lp(max_len)
        if bool((best_alive < fin_scores.min(dim=1).values).all()):
            break

    # Items with no finished hypothesis fall back to their best alive beam (length max_len, no EOS).
    no_fin = torch.isinf(fin_scores[:, 0])
    if no_fin.any():
        h, _, _ = step_fn(inputs, cache)
        last = feature_fn(h, qidx)[:, None]
        feats = last if alive_feats is None else torch.cat([alive_feats, last], dim=1)
        j = alive_scores.argmax(dim=1)
        rows = torch.arange(q, device=dev) * k + j
        t = inputs.shape[1] - 1
        fin_tokens[no_fin, 0, :t] = inputs[rows, 1:][no_fin]
        fin_feats[no_fin, 0, :t] = feats[rows][no_fin]
        fin_scores[no_fin, 0] = alive_scores.max(dim=1).values[no_fin] / lp(t)
    order = fin_scores.argmax(dim=1)
    ar = torch.arange(q, device=dev)
    tokens = fin_tokens[ar, order]
    feats = fin_feats[ar, order]
    # Trim the common padding tail.
    used = int(((tokens != pad_id).sum(dim=1)).max().item()) if tokens.numel() else 0
    tokens, feats = tokens[:, : max(used, 1)], feats[:, : max(used, 1)]
    keep = (tokens != eos_id) & (tokens != pad_id)
    return Generated(tokens=tokens, features=feats * keep[..., None].to(feats.dtype), scores=fin_scores[ar, order])
