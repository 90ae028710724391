"""Checks of the meta-architecture's options, at build time: an unknown key or value raises, naming it."""
from difflib import get_close_matches
from typing import Dict

from ...tasks import TASKS

__all__ = ["DECODE_DEFAULTS", "check_decode_options", "check_prompts", "vocab_size_of"]

# MODEL.PIXELLLM.DECODE, lower-cased.
DECODE_DEFAULTS = dict(method="greedy", num_beams=4, length_penalty=0.6, max_len=40, no_immediate_repeat=True)


def _unknown(kind: str, key: str, known) -> ValueError:
    near = get_close_matches(key, list(known), n=2)
    hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
    return ValueError(f"unknown {kind} {key!r}{hint}; known: {', '.join(sorted(known))}")


def check_decode_options(decode: Dict, defaults: bool = False) -> Dict:
    """The decoding options (`DECODE_DEFAULTS` keys), checked; with `defaults`, missing keys take their defaults.

    Raises:
        ValueError: an unknown key, an unknown method, or a non-positive length / beam count.
    """
    for key in decode:
        if key not in DECODE_DEFAULTS:
            raise _unknown("decode option", key, DECODE_DEFAULTS)
    out = dict(DECODE_DEFAULTS, **decode) if defaults else dict(decode)
    if out.get("method", "greedy") not in ("greedy", "beam"):
        raise ValueError(f"decode method must be 'greedy' or 'beam' (MODEL.PIXELLLM.DECODE.METHOD), got {out['method']!r}")
    for key in ("num_beams", "max_len"):
        if key in out and int(out[key]) < 1:
            raise ValueError(f"decode option {key!r} must be >= 1, got {out[key]}")
    return out


def check_prompts(prompts: Dict[str, str]) -> Dict[str, str]:
    """The context prompts by MODEL.PIXELLLM.PROMPTS key: every key a task names (`Task.prompt`) must be there and
    every key must be one a task names."""
    needed = {t.prompt for t in TASKS.values()}
    for key in prompts:
        if key not in needed:
            raise _unknown("prompt key", key, needed)
    missing = sorted(needed - set(prompts))
    if missing:
        raise ValueError(f"no context prompt for {missing} (MODEL.PIXELLLM.PROMPTS); tasks need {sorted(needed)}")
    return dict(prompts)


def vocab_size_of(cfg) -> int:
    """The language model's vocabulary: LANGUAGE.VOCAB_SIZE, else the weights folder's (0), else the tokenizer's
    size rounded up to a multiple of 128, else T5's 32128."""
    from ...text import build_tokenizer

    lang = cfg.MODEL.PIXELLLM.LANGUAGE
    if lang.VOCAB_SIZE > 0:
        return lang.VOCAB_SIZE
    if lang.WEIGHTS:
        return 0  # taken from the folder's config.json
    if lang.TOKENIZER:
        n = len(build_tokenizer(lang.TOKENIZER))
        return (n + 127) // 128 * 128
    return 32128  # T5's SentencePiece vocabulary
