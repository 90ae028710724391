"""Reading and atomically writing the json files of an evaluation, and the results table of the log."""
import json
import math
import os
from typing import Any, Dict, Mapping

from tabulate import tabulate

from ..utils.file_io import atomic_write

__all__ = ["load_json", "write_json_atomic", "results_table", "json_ready"]


def load_json(path: str, what: str = "file") -> Any:
    """Parse the json file `path`; errors name the file and say it is the `what` (e.g. "ground truth")."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path!r} is not valid json: {e}") from e


def write_json_atomic(path: str, obj: Any) -> None:
    """Write `obj` as json (no NaN / Inf) to `path` atomically (`utils.file_io.atomic_write`), creating its folder:
    a killed run leaves either the old file or the complete new one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(obj, f, allow_nan=False)


def results_table(results: Mapping[str, float], title: str = "") -> str:
    """A readable table of a flat results dict: each value as stored (fractions; `point_l1` in image-size units,
    4 decimals) and, for the fractions, in percent."""

    def pct(k, v):
        return f"{100 * v:.2f}" if isinstance(v, float) and math.isfinite(v) and k != "point_l1" and "boot_std" not in k else ""

    rows = [(k, f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else v, pct(k, v)) for k, v in results.items()]
    table = tabulate(rows, headers=["metric", "value", "%"], tablefmt="pipe", colalign=("left", "right", "right"))
    return f"{title}\n{table}" if title else table


def json_ready(results: Mapping[str, Any]) -> Dict[str, Any]:
    """`results` with numpy scalars turned into Python numbers (json cannot write numpy types)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in results.items()}
