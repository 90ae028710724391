"""Text: the tokenizers (T5 and BERT families) and the embedded benchmark's vocabulary. Imports
neither data nor modeling."""
from .tokenizer import TextTokenizer, build_tokenizer, train_word_sentencepiece, wordpiece_vocab

__all__ = ["TextTokenizer", "build_tokenizer", "train_word_sentencepiece", "wordpiece_vocab"]
