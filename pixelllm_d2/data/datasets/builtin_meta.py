"""Tasks the mapper builds and the evaluator each one is scored by (docs/DESIGN.md §1)."""

__all__ = ["TASKS", "evaluator_type_of"]

# task -> evaluator_type
TASKS = {
    "trace": "trace",
    "caption": "caption",
    "region": "loca",
    "refer": "refer",
    "densecap": "densecap",
}


def evaluator_type_of(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]
