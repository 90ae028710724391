"""The words of the embedded "shapes" benchmark.

Both the scene generator (captions, expressions, narratives) and the "shapes" tokenizer
(`pixelllm_d2.tokenizer.build_tokenizer("shapes")`, word-level) are built from this module, so every word the
generator writes must be listed here; a test checks that no generated text maps to the unknown token.
Texts use no punctuation: the word-level tokenizer splits on white space only.
"""
from typing import List

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Relative positions used to tell apart objects of the same description.
POSITIONS = ("left", "right", "top", "bottom")

# Words of the templates (captions, referring expressions, narratives).
TEMPLATE_WORDS = (
    "a an the and on in of this image we can see there is are at with two three four "
    "one another next to it picture shows some shapes object objects"
).split()

# Words of the default context prompts (MODEL.PIXELLLM.PROMPTS), verbatim so they tokenize without unknowns.
PROMPT_WORDS = "A long short image caption: an object of where is".split()


def vocabulary() -> List[str]:
    """Every word the benchmark's texts and the default prompts may contain (sorted, unique)."""
    words = set(COLORS) | set(SHAPES) | set(SIZES) | set(POSITIONS) | set(TEMPLATE_WORDS) | set(PROMPT_WORDS)
    return sorted(words)
