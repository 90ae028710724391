"""`DatasetCatalog` and `MetadataCatalog` in detectron2's shape.

`DatasetCatalog` maps a dataset name to a function that returns its dataset dicts (docs/DESIGN.md §1);
`MetadataCatalog` maps the same name to a `Metadata` object (task, evaluator_type, source files, ...). Both are
process-global singletons, filled on import of `pixelllm_d2.data` with the builtin datasets.
"""
import types
from collections import UserDict
from typing import Any, Callable, Dict, List

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata"]


class _DatasetCatalog(UserDict):
    """A global dictionary name -> function returning `list[dict]`. The function is called on every `get`, so the
    catalog holds no data."""

    def register(self, name: str, func: Callable[[], List[dict]]) -> None:
        """Register `func` (no arguments, returns the dataset dicts) under `name`; a name is registered once."""
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register({name!r}, ...): expected a callable, got {type(func).__name__}")
        if name in self:
            raise KeyError(f"dataset {name!r} is already registered; DatasetCatalog.remove({name!r}) first")
        self[name] = func

    def get(self, name: str) -> List[dict]:
        """Call the function registered under `name` and return its dataset dicts."""
        try:
            func = self[name]
        except KeyError as e:
            raise KeyError(
                f"dataset {name!r} is not registered. Available datasets: {', '.join(sorted(self.keys()))}"
            ) from e
        return func()

    def list(self) -> List[str]:
        """Registered names, sorted."""
        return sorted(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __str__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.list())})"

    __repr__ = __str__


class Metadata(types.SimpleNamespace):
    """Attributes of one dataset. Setting an attribute that already holds a different value is an error (two
    registrations disagreeing about a dataset is a bug), as in detectron2."""

    name: str = "N/A"

    def __getattr__(self, key: str) -> Any:
        # Only called when normal lookup fails.
        raise AttributeError(
            f"metadata of dataset {self.name!r} has no attribute {key!r}; available: {sorted(self.__dict__)}"
        )

    def __setattr__(self, key: str, val: Any) -> None:
        if key in self.__dict__ and self.__dict__[key] != val:
            raise AttributeError(
                f"metadata of dataset {self.name!r}: attribute {key!r} is already {self.__dict__[key]!r}, "
                f"refusing to set it to {val!r}"
            )
        super().__setattr__(key, val)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    def set(self, **kwargs) -> "Metadata":
        """Set several attributes at once; returns self."""
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)


class _MetadataCatalog(UserDict):
    """A global dictionary name -> `Metadata`; `get` creates an empty one on first use."""

    def get(self, name: str) -> Metadata:
        if name not in self:
            self[name] = Metadata(name=name)
        return self[name]

    def list(self) -> List[str]:
        return sorted(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __str__(self) -> str:
        return f"MetadataCatalog(registered metadata: {', '.join(self.list())})"

    __repr__ = __str__


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
