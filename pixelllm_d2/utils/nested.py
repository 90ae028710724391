"""Nested containers of model inputs and outputs (dicts, lists, tuples) transformed leaf by leaf."""
from typing import Any, Callable

__all__ = ["map_leaves"]


def map_leaves(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """`obj` with `fn` applied to every leaf inside its dicts, lists and tuples (rebuilt with the same types; a
    namedtuple is a leaf)."""
    if isinstance(obj, dict):
        return {k: map_leaves(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(map_leaves(v, fn) for v in obj)
    return fn(obj)
