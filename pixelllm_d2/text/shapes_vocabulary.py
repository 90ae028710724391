"""The vocabulary of the embedded "shapes" benchmark: every word its generated texts and the default context
prompts may contain. The "shapes" tokenizer (`pixelllm_d2.text.build_tokenizer("shapes")`, word-level) is
trained on it and the generator (`pixelllm_d2.data.datasets.shapes_text`) writes only these words; a test checks
that no generated text maps to the unknown token."""
from typing import List

__all__ = ["COLORS", "SHAPES", "SIZES", "POSITIONS", "TEMPLATE_WORDS", "PROMPT_WORDS", "vocabulary"]

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Relative positions used to tell apart objects of the same description.
POSITIONS = ("left", "right", "top", "bottom")

# Words of the templates (captions, referring expressions, narratives).
TEMPLATE_WORDS = (
    "a an the and on in of this image we can see there is are at with two three four "
    "one another next to it picture shows some shapes shape object objects"
).split()

# Words of the default context prompts (MODEL.PIXELLLM.PROMPTS), verbatim so they tokenize without unknowns.
PROMPT_WORDS = "A long short image caption: an object of where is".split()


def vocabulary() -> List[str]:
    """Every word the benchmark's texts and the default prompts may contain (sorted, unique)."""
    words = set(COLORS) | set(SHAPES) | set(SIZES) | set(POSITIONS) | set(TEMPLATE_WORDS) | set(PROMPT_WORDS)
    return sorted(words)
