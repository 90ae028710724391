"""Text tokenizers shared by the data mapper (training targets) and the model (prompts, decoding).

Sources, none fetched from a hub:
- a local folder: `tokenizer.json` (HF fast tokenizer), `spiece.model` (T5's SentencePiece, e.g. a Flan-T5
  checkpoint folder) or `vocab.txt` (BERT's WordPiece, e.g. a bert-base-uncased folder);
- "byt5": the byte-level ByT5 tokenizer, which needs no file;
- "shapes": a word-level SentencePiece model of the embedded benchmark's vocabulary, trained by code on first use
  (deterministic: one thread, a fixed word list) and cached under `$PIXELLLM_CACHE` (default
  `~/.cache/pixelllm_d2`);
- "shapes-wordpiece": the same vocabulary as a BERT WordPiece vocab.txt laid out as bert-base-uncased's (pad 0,
  [UNK] 100, [CLS] 101, [SEP] 102), for the BERT / GIT decoder family at tiny scale.

Ids: T5 family: pad = 0 = BOS (the decoder's start token), EOS = 1. BERT family: pad = 0, BOS = [CLS],
EOS = [SEP] (101 / 102 in bert-base-uncased).
"""
from __future__ import annotations

import hashlib
import io
import os
from functools import lru_cache
from typing import List, Sequence, Tuple

__all__ = ["TextTokenizer", "build_tokenizer", "train_word_sentencepiece", "wordpiece_vocab"]

# SentencePiece's word-boundary marker.
_SP_SPACE = "\u2581"


class TextTokenizer:
    """A thin, uniform wrapper over a HF tokenizer.

    Args:
        hf_tokenizer: a `transformers` tokenizer with a pad token and an EOS (or, BERT, [SEP]) token.
        name: where it came from, for messages.

    Attributes:
        pad_id, bos_id, eos_id, unk_id (-1 if none): BOS is the tokenizer's BOS, else its [CLS], else pad (T5).
        wordpiece: True for BERT-style WordPiece ("##" marks a piece that continues a word).
    """

    def __init__(self, hf_tokenizer, name: str = ""):
        self.hf = hf_tokenizer
        self.name = name
        pad, eos = hf_tokenizer.pad_token_id, _first_set(hf_tokenizer.eos_token_id, getattr(hf_tokenizer, "sep_token_id", None))
        if pad is None or eos is None or pad == eos:
            raise ValueError(f"tokenizer {name!r}: PixelLLM needs distinct pad and EOS (or [SEP]) ids, got pad {pad} "
                             f"and EOS {eos}")
        self.pad_id, self.eos_id = int(pad), int(eos)
        self.bos_id = int(_first_set(hf_tokenizer.bos_token_id, getattr(hf_tokenizer, "cls_token_id", None), pad))
        unk = hf_tokenizer.unk_token_id
        self.unk_id = -1 if unk is None else int(unk)
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        self.wordpiece = type(getattr(backend, "model", None)).__name__ == "WordPiece"
        self.special_ids = set(int(i) for i in hf_tokenizer.all_special_ids)
        # Training re-tokenises the same captions and prompts every epoch (~40 texts per batch on the loader's
        # critical path); a tokenizer is deterministic, so each text's ids are kept (bounded: long corpora).
        self._ids = lru_cache(maxsize=1 << 16)(self._hf_ids)

    def __len__(self) -> int:
        return len(self.hf)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str, max_len: int = 0, add_eos: bool = True) -> List[int]:
        """Token ids of `text` (no BOS). With `add_eos`, the last id is EOS even when the text is truncated to
        `max_len` (which counts the EOS)."""
        ids = list(self._ids(text))
        if max_len > 0:
            ids = ids[: max_len - 1 if add_eos else max_len]
        return ids + [self.eos_id] if add_eos else ids

    def _hf_ids(self, text: str) -> Tuple[int, ...]:
        return tuple(self.hf(text, add_special_tokens=False).input_ids)

    def __getstate__(self):  # the cache is a per-process bound function: rebuilt, not pickled (loader workers)
        state = self.__dict__.copy()
        state.pop("_ids")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._ids = lru_cache(maxsize=1 << 16)(self._hf_ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, stopping at the first EOS; pad and other special ids dropped."""
        return self.hf.decode(self._until_eos(ids), skip_special_tokens=True).strip()

    def pieces(self, ids: Sequence[int]) -> List[str]:
        return self.hf.convert_ids_to_tokens([int(i) for i in ids])

    def _until_eos(self, ids: Sequence[int]) -> List[int]:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            out.append(i)
        return out

    def group_words(self, ids: Sequence[int]) -> Tuple[List[str], List[int]]:
        """Split token ids into words.

        Returns:
            words: the words, in order.
            token_to_word: for every id in `ids`, the index of its word, or -1 for special tokens, whitespace-only
                tokens and everything from the first EOS on.
        """
        words: List[str] = []
        token_to_word: List[int] = []
        current: List[int] = []  # token ids of the word being built
        ended = False

        def flush():
            if current:
                if self.wordpiece:  # BERT's decode would put a space before ':' and the like
                    text = "".join(p[2:] if p.startswith("##") else p for p in self.hf.convert_ids_to_tokens(current))
                else:
                    text = self.hf.decode(current, skip_special_tokens=True).strip()
                words.append(text)
                current.clear()

        for i in ids:
            i = int(i)
            if ended or i == self.eos_id:
                ended = True
                token_to_word.append(-1)
                continue
            if i in self.special_ids:
                token_to_word.append(-1)
                continue
            piece = self.hf.convert_ids_to_tokens(i)
            if piece is None:  # an id of the model's vocabulary the tokenizer lacks (T5's 28 unused ids): no word
                token_to_word.append(-1)
                continue
            text = self.hf.decode([i], skip_special_tokens=True)
            if self.wordpiece:  # punctuation joins the word before it, as SentencePiece's pieces do
                starts_word = not piece.startswith("##") and not (current and not any(c.isalnum() for c in piece))
            else:
                starts_word = piece.startswith(_SP_SPACE) or text[:1].isspace()
            if not text.strip():
                # whitespace-only token: ends the current word, belongs to none
                flush()
                token_to_word.append(-1)
                continue
            if starts_word:
                flush()
            current.append(i)
            token_to_word.append(len(words))
        flush()
        # Tokens that decode to nothing visible can leave an empty word; drop it and renumber.
        keep = [k for k, w in enumerate(words) if w]
        remap = {old: new for new, old in enumerate(keep)}
        return [words[k] for k in keep], [remap.get(t, -1) for t in token_to_word]


def _first_set(*values):
    return next((v for v in values if v is not None), None)


def train_word_sentencepiece(words: Sequence[str]) -> bytes:
    """A word-level SentencePiece model (T5 ids: pad 0, EOS 1, unk 2, no BOS) over `words`, serialised.
    Deterministic for the same word list."""
    import sentencepiece as spm

    uniq = sorted(set(w for w in words if w.strip()))
    if not uniq:
        raise ValueError("train_word_sentencepiece: empty word list")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(uniq),
        model_writer=buf,
        model_type="word",
        vocab_size=len(uniq) + 3,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        character_coverage=1.0,
        minloglevel=2,
    )
    return buf.getvalue()


def _cache_root() -> str:
    return os.path.expanduser(os.environ.get("PIXELLLM_CACHE", "~/.cache/pixelllm_d2"))


def _shapes_tokenizer_dir() -> str:
    from .shapes_vocabulary import vocabulary

    words = vocabulary()
    digest = hashlib.sha1("\n".join(sorted(set(words))).encode()).hexdigest()[:12]
    folder = os.path.join(_cache_root(), "tokenizers", f"shapes-{digest}")
    model_file = os.path.join(folder, "spiece.model")
    if not os.path.isfile(model_file):
        from ..utils.file_io import atomic_write

        os.makedirs(folder, exist_ok=True)
        with atomic_write(model_file) as f:  # concurrent processes never read a torn file
            f.write(train_word_sentencepiece(words))
    return folder


def wordpiece_vocab(words: Sequence[str]) -> List[str]:
    """A BERT vocab.txt's lines over `words` (lower-cased, ':' ',' '.' split off), in bert-base-uncased's layout:
    [PAD] 0, [unused0-98] 1-99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, then the words."""
    uniq = sorted({w.lower().strip(":,.") for w in words if w.strip(":,. ")} | {":", ",", "."})
    return ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + uniq


def _shapes_wordpiece_dir() -> str:
    from .shapes_vocabulary import vocabulary

    lines = wordpiece_vocab(vocabulary())
    text = "\n".join(lines) + "\n"
    folder = os.path.join(_cache_root(), "tokenizers", f"shapes-wordpiece-{hashlib.sha1(text.encode()).hexdigest()[:12]}")
    vocab_file = os.path.join(folder, "vocab.txt")
    if not os.path.isfile(vocab_file):
        from ..utils.file_io import atomic_write

        os.makedirs(folder, exist_ok=True)
        with atomic_write(vocab_file) as f:
            f.write(text.encode())
    return folder


@lru_cache(maxsize=8)
def build_tokenizer(name_or_path: str) -> TextTokenizer:
    """Build a tokenizer from a local folder, "byt5" or "shapes" (see the module docstring)."""
    from transformers import AutoTokenizer, BertTokenizer, ByT5Tokenizer, T5Tokenizer

    if not name_or_path:
        raise ValueError(
            "no tokenizer configured: set MODEL.PIXELLLM.LANGUAGE.TOKENIZER (a local folder with spiece.model, "
            "tokenizer.json or vocab.txt, 'byt5', 'shapes' or 'shapes-wordpiece') or MODEL.PIXELLLM.LANGUAGE.WEIGHTS "
            "(a local T5 / BERT folder)"
        )
    if name_or_path == "byt5":
        return TextTokenizer(ByT5Tokenizer(), name="byt5")
    if name_or_path == "shapes":
        return TextTokenizer(T5Tokenizer.from_pretrained(_shapes_tokenizer_dir(), extra_ids=0), name="shapes")
    if name_or_path == "shapes-wordpiece":
        return TextTokenizer(BertTokenizer.from_pretrained(_shapes_wordpiece_dir(), local_files_only=True), name="shapes-wordpiece")
    folder = os.path.expanduser(name_or_path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"tokenizer {name_or_path!r}: not a folder; expected a local folder with spiece.model, tokenizer.json "
            f"or vocab.txt (nothing is downloaded), or one of 'byt5', 'shapes', 'shapes-wordpiece'"
        )
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        hf = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    elif os.path.isfile(os.path.join(folder, "spiece.model")):
        hf = T5Tokenizer.from_pretrained(folder, local_files_only=True)
    elif os.path.isfile(os.path.join(folder, "vocab.txt")):
        hf = BertTokenizer.from_pretrained(folder, local_files_only=True)
    else:
        raise FileNotFoundError(f"tokenizer folder {folder!r} holds none of tokenizer.json, spiece.model, vocab.txt")
    return TextTokenizer(hf, name=folder)
