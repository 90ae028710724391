"""Text: the tokenizers (T5 id convention: pad 0, EOS 1) and the embedded benchmark's vocabulary. Imports
neither data nor modeling."""
from .tokenizer import TextTokenizer, build_tokenizer, train_word_sentencepiece

__all__ = ["TextTokenizer", "build_tokenizer", "train_word_sentencepiece"]
