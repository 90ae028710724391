"""Localized Narratives: mouse traces -> per-utterance boxes (offline) -> per-token boxes (online).

Both steps follow the official PixelLLM code (spec §2.2; `tools/build_ln_tfrecord.py: trace2coord` and
`io/ops.py: DecodeLocalizedNarrativesAnnotations`):

Offline (`summarize_traces`, run by the loader): all trace points of a narrative are concatenated and sorted by
time; each timed utterance is sampled at 16 evenly spaced times in [start_time, end_time] by linear interpolation
of x(t), y(t) (linear extrapolation outside the trace); the utterance keeps the time-averaged centre (trapezoid
integral / duration; plain mean when the duration is < 1e-5), the min/max box and the 16 samples.

Online (`align_tokens_to_utterances(mode="official")`, run by the mapper): the whole caption is tokenised; the
k-th of the K valid utterances (non-empty text and centre > 1e-5 in both coordinates) sits at position k/K; the
j-th of the N text tokens (EOS and padding excluded) sits at j/N rescaled to [1/K, 1]; each token takes the
utterance at the nearest position (the first one on ties). The alignment is order-proportional: it never looks at
the words, and the first and last utterances receive half as many tokens as the others.

`mode="timestamp"` instead assigns every word to the utterance whose text holds it (see
`_align_by_utterance_text`), exact when the caption is the concatenation of the utterances, as in LN.
"""
from typing import List, Sequence

import numpy as np

__all__ = ["NUM_TRACE_SAMPLES", "summarize_traces", "align_tokens_to_utterances"]

# Samples per utterance in the official offline step (`num_samples_per_trace`).
NUM_TRACE_SAMPLES = 16
# Utterance centres at or below this (in either coordinate) mark an utterance without trace (official).
_MIN_CENTER = 1e-5


def _interp_extrapolate(tq: np.ndarray, t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Piecewise-linear v(tq) through (t, v) (t sorted), extended linearly beyond both ends with the slope of the
    first / last segment, like scipy's `interp1d(fill_value="extrapolate")`. Repeated times, where interp1d would
    divide by zero, take the nearest segment of non-zero duration."""
    out = np.interp(tq, t, v)
    distinct = np.flatnonzero(np.diff(t) > 0)
    if distinct.size == 0:  # all points at one time: no slope to extend with
        return out
    i0, i1 = distinct[0], distinct[-1]
    slope0 = (v[i0 + 1] - v[i0]) / (t[i0 + 1] - t[i0])
    slope1 = (v[i1 + 1] - v[i1]) / (t[i1 + 1] - t[i1])
    before, after = tq < t[0], tq > t[-1]
    out[before] = v[0] + (tq[before] - t[0]) * slope0
    out[after] = v[-1] + (tq[after] - t[-1]) * slope1
    return out


def summarize_traces(
    points: np.ndarray, timed_caption: Sequence[dict], num_samples: int = NUM_TRACE_SAMPLES
) -> List[dict]:
    """The official offline step for one narrative.

    Args:
        points: float [P, 3] of (x, y, t), x and y normalised to the image (may stray outside [0, 1]), P >= 2,
            all segments of the narrative's trace concatenated in any order.
        timed_caption: the narrative's utterances, dicts with "utterance", "start_time", "end_time" (seconds).
        num_samples: samples per utterance (official: 16).

    Returns:
        One dict per utterance, in input order: "utterance", "start_time", "end_time", "box" [x0, y0, x1, y1]
        (min / max of the samples), "center" [x, y] (time-averaged), "points" [num_samples x [x, y]]; all
        clipped to [0, 1] (clipping after the min / max / average equals the official clipping at load time).
    """
    points = np.asarray(points, dtype=np.float64)
    order = np.argsort(points[:, 2], kind="stable")
    x, y, t = points[order, 0], points[order, 1], points[order, 2]
    starts = np.array([float(u["start_time"]) for u in timed_caption])
    ends = np.array([float(u["end_time"]) for u in timed_caption])
    ts = np.linspace(starts, ends, num=num_samples, axis=1)  # [U, S], all utterances at once
    xs = _interp_extrapolate(ts.ravel(), t, x).reshape(ts.shape)
    ys = _interp_extrapolate(ts.ravel(), t, y).reshape(ts.shape)
    duration = ts[:, -1] - ts[:, 0]
    instant = duration < 1e-5
    safe = np.where(instant, 1.0, duration)
    cx = np.where(instant, xs.mean(1), np.trapezoid(xs, ts, axis=1) / safe)
    cy = np.where(instant, ys.mean(1), np.trapezoid(ys, ts, axis=1) / safe)
    boxes = np.clip(np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1), 0.0, 1.0).tolist()
    centers = np.clip(np.stack([cx, cy], axis=1), 0.0, 1.0).tolist()
    samples = np.clip(np.stack([xs, ys], axis=2), 0.0, 1.0).tolist()
    return [
        {"utterance": u["utterance"], "start_time": float(s), "end_time": float(e), "box": b, "center": c, "points": p}
        for u, s, e, b, c, p in zip(timed_caption, starts, ends, boxes, centers, samples)
    ]


def _valid_utterances(utterances: Sequence[dict]) -> np.ndarray:
    return np.array(
        [
            bool(str(u["utterance"]).strip()) and all(c > _MIN_CENTER for c in u["center"])
            for u in utterances
        ],
        dtype=bool,
    )


def _align_official(text_mask: np.ndarray, valid_utt: np.ndarray) -> np.ndarray:
    num_tokens, num_valid = int(text_mask.sum()), int(valid_utt.sum())
    out = np.full(text_mask.shape, -1, dtype=np.int64)
    if num_tokens == 0 or num_valid == 0:  # the official code divides by zero here; no target instead
        return out
    utt_pos = np.where(valid_utt, np.cumsum(valid_utt) / num_valid, -1.0)
    start, end = 1.0 / num_valid, 1.0  # smallest and largest valid position
    token_pos = np.cumsum(text_mask) / num_tokens
    token_pos = start + token_pos * (end - start)
    dist = (token_pos[:, None] - utt_pos[None, :]) ** 2
    nearest = np.argmin(dist, axis=1)  # first index on ties, as tf.argmin
    out[text_mask] = nearest[text_mask]
    return out


def _normalize_word(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def _align_by_utterance_text(token_ids, text_mask, utterances, valid_utt, tokenizer) -> np.ndarray:
    """Timestamp-exact alignment: the caption's words (as the tokenizer groups them) are matched in order against
    the words of the utterances (lower-cased, punctuation removed). Each caption word takes the utterance of the
    next matching utterance word (searching forward from the previous match); a word with no match, or made of
    punctuation only, takes the utterance of the previous word (the first utterance at the start). Tokens of
    words in an invalid utterance get no target."""
    words, token_to_word = tokenizer.group_words(token_ids)
    utt_words = [
        (nw, u)
        for u, utt in enumerate(utterances)
        for w in str(utt["utterance"]).split()
        if (nw := _normalize_word(w))
    ]
    out = np.full(len(token_ids), -1, dtype=np.int64)
    if not utt_words:
        return out
    word_utt, cursor, current = [], 0, utt_words[0][1]
    for w in words:
        nw = _normalize_word(w)
        if nw:
            for q in range(cursor, len(utt_words)):
                if utt_words[q][0] == nw:
                    current, cursor = utt_words[q][1], q + 1
                    break
        word_utt.append(current)
    for i, wi in enumerate(token_to_word):
        if wi >= 0 and text_mask[i] and valid_utt[word_utt[wi]]:
            out[i] = word_utt[wi]
    return out


def align_tokens_to_utterances(
    token_ids: Sequence[int], utterances: Sequence[dict], tokenizer, mode: str = "official"
) -> np.ndarray:
    """Assign each token of a narrative's caption to one of its utterances.

    Args:
        token_ids: int [T], the tokenised caption (EOS-terminated, maybe padded with 0), as in `target_ids`.
        utterances: the narrative's utterances from the dataset dict (need "utterance" and "center").
        tokenizer: the `TextTokenizer` that produced `token_ids` (its pad / EOS / special ids; word grouping).
        mode: "official" (order-proportional, spec §2.2) or "timestamp" (words matched to utterance texts).

    Returns:
        int64 [T]: index into `utterances` per token; -1 for EOS, padding and tokens left without a valid
        utterance.
    """
    ids = np.asarray([int(i) for i in token_ids], dtype=np.int64)
    text_mask = np.ones(len(ids), dtype=bool)
    eos = np.flatnonzero(ids == tokenizer.eos_id)
    if eos.size:
        text_mask[eos[0]:] = False
    text_mask &= ids != tokenizer.pad_id  # official: every id but BOS / EOS / pad counts (unknown ids too)
    if not len(utterances):
        return np.full(len(ids), -1, dtype=np.int64)
    valid_utt = _valid_utterances(utterances)
    if mode == "official":
        return _align_official(text_mask, valid_utt)
    if mode == "timestamp":
        return _align_by_utterance_text(ids.tolist(), text_mask, utterances, valid_utt, tokenizer)
    raise ValueError(f"trace alignment mode must be 'official' or 'timestamp', got {mode!r}")
