"""PixelLLM's tasks, declared once. The dataset mapper, the model, the predictor and the evaluators read what a
task is from this table and never compare task names themselves, so a task that combines existing kinds
(e.g. captioning given boxes of another dataset, with another prompt) is one entry here. A new *kind* (a new
source of queries, a new location target, a new read-out) needs code where that kind is implemented: the
mapper's query builders (`data/inputs.py`), the model's targets and read-outs (`modeling/meta_arch/`).

Coordinates and formats are those of docs/DESIGN.md.
"""
from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = ["Task", "TASKS", "get_task", "task_names", "PREDICTOR_TASKS"]



@dataclass(frozen=True)
class Task:
    """What a task is.

    Attributes:
        name: the task's name (dataset metadata `task`, model input `task`).
        queries: what the mapper makes queries of: "narratives" (one narrative per query), "captions" (the
            image's captions), "regions" (one query per annotated box), "expressions" (one query per referring
            expression) or "detector" (one query standing for every proposal of the detector).
        prompt: the key of MODEL.PIXELLLM.PROMPTS holding the context prompt.
        prompt_box: the box prompt of each query: "image" (the whole image), "query" (the query's own box) or
            "detector" (the detector's proposals).
        context_text: the query's text is appended to the context prompt ("where is " + expression).
        text_loss: the text cross-entropy trains on the query's text.
        text_at_test: "generated" (decoded) or "given" (teacher-forced on the dataset's / user's text).
        token_targets: per-token location targets: "trace_boxes" (the aligned trace boxes), "query_box" (every token
            -> the query's box; official `get_gt_points_from_boxes`, with LOSS.REGION_POINTS), "matched_box" (a
            proposal's matched GT box, with LOSS.REGION_POINTS) or "none".
        box_at_last_word: the task's answer is the box read at the last word (the position whose next token is
            EOS), trained against the query's GT box; masks follow it with MODEL.MASK_ON.
        evaluator: the evaluator type of its datasets (`pixelllm_d2.evaluation.EVALUATOR_TYPES`).
        predictor: offered by `PixelLLMPredictor` / tools/demo.py (trace is a training / evaluation task: the
            predictor's "caption" uses its prompt).
        augmentation: the INPUT key of its train-time augmentation (INPUT.<KEY>.SCALE_RANGE / HFLIP); default
            its name in capitals.
    """

    name: str
    queries: str
    prompt: str
    prompt_box: str
    context_text: bool
    text_loss: bool
    text_at_test: str
    token_targets: str
    box_at_last_word: bool
    evaluator: str
    predictor: bool
    augmentation: str = ""

    def __post_init__(self):
        for field, allowed in _KINDS.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"task {self.name!r}: {field} must be one of {allowed}, got {getattr(self, field)!r}")
        if not self.augmentation:
            object.__setattr__(self, "augmentation", self.name.upper())


# The kinds each attribute may take; a new kind needs its implementation (see the module docstring).
_KINDS = {
    "queries": ("narratives", "captions", "regions", "expressions", "detector"),
    "prompt_box": ("image", "query", "detector"),
    "text_at_test": ("generated", "given"),
    "token_targets": ("trace_boxes", "query_box", "matched_box", "none"),
}


TASKS: Dict[str, Task] = {
    t.name: t
    for t in (
        Task("caption", queries="captions", prompt="CAPTION", prompt_box="image", context_text=False, text_loss=True,
             text_at_test="generated", token_targets="none", box_at_last_word=False, evaluator="caption",
             predictor=True),
        Task("trace", queries="narratives", prompt="TRACE", prompt_box="image", context_text=False, text_loss=True,
             text_at_test="given", token_targets="trace_boxes", box_at_last_word=False, evaluator="trace",
             predictor=False),
        Task("region", queries="regions", prompt="REGION", prompt_box="query", context_text=False, text_loss=True,
             text_at_test="generated", token_targets="query_box", box_at_last_word=False, evaluator="loca",
             predictor=True),
        # Official: the referring sources carry only the point task, so no text loss; the expression is the
        # decoder's input and the box is read where the next token is EOS.
        Task("refer", queries="expressions", prompt="REFER", prompt_box="image", context_text=True, text_loss=False,
             text_at_test="given", token_targets="none", box_at_last_word=True, evaluator="refer", predictor=True),
        Task("densecap", queries="detector", prompt="DENSECAP", prompt_box="detector", context_text=False,
             text_loss=True, text_at_test="generated", token_targets="matched_box", box_at_last_word=False,
             evaluator="densecap", predictor=True),
    )
}

# The predictor's tasks of the builtin table (a task added at run time is offered when its `predictor` is set).
PREDICTOR_TASKS: Tuple[str, ...] = tuple(name for name, t in TASKS.items() if t.predictor)


def get_task(name: str) -> Task:
    """The task called `name`; ValueError listing the known ones otherwise."""
    task = TASKS.get(name) if isinstance(name, str) else None
    if task is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return task


def task_names(**where) -> Tuple[str, ...]:
    """Names of the tasks whose attributes equal `where` (e.g. `task_names(text_loss=True)`)."""
    return tuple(name for name, t in TASKS.items() if all(getattr(t, k) == v for k, v in where.items()))
