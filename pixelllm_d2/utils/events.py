"""Scalars recorded during training (`EventStorage`) and the writers that publish them: console
(`CommonMetricPrinter`), `metrics.json` lines (`JSONWriter`) and TensorBoard events (`TensorboardXWriter`).
Semantics follow detectron2's `detectron2.utils.events`."""
import datetime
import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
from fvcore.common.history_buffer import HistoryBuffer

from .memory import peak_memory_mib

__all__ = [
    "EventStorage",
    "get_event_storage",
    "EventWriter",
    "JSONWriter",
    "TensorboardXWriter",
    "CommonMetricPrinter",
    "default_writers",
    "truncate_json_metrics",
]

_CURRENT_STORAGE_STACK: List["EventStorage"] = []

# Values per scalar a checkpoint keeps of the history (the writers' smoothing windows are 20).
HISTORY_KEPT = 200


def get_event_storage() -> "EventStorage":
    """The innermost `EventStorage` in use (the trainer opens one for the whole run)."""
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError("get_event_storage() has to be called inside a 'with EventStorage(...)' context")
    return _CURRENT_STORAGE_STACK[-1]


class EventStorage:
    """Per-iteration scalars with their history. Use as a context manager so `get_event_storage()` finds it.

    Args:
        start_iter: the first iteration of the run (kept as `start_iter`).
    """

    def __init__(self, start_iter: int = 0):
        self.start_iter = start_iter
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, Tuple[float, int]] = {}
        self._iter = start_iter

    def put_scalar(self, name: str, value, smoothing_hint: bool = True, cur_iter: Optional[int] = None) -> None:
        """Record `value` (a number or a 0-d tensor) for `name` at `cur_iter` (default: the current iteration).
        `smoothing_hint` tells writers whether a windowed median is meaningful for this scalar (losses: yes;
        learning rate, evaluation metrics: no)."""
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        existing = self._smoothing_hints.get(name)
        if existing is not None and existing != smoothing_hint:
            raise ValueError(f"Scalar {name} was put with different smoothing hints")
        self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **kwargs) -> None:
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"No history metric available for {name}!")
        return self._history[name]

    def histories(self) -> Dict[str, HistoryBuffer]:
        return self._history

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """name -> (latest value, iteration it was put at)."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like `latest`, but scalars with a smoothing hint are the median over the last `window_size` values."""
        out = {}
        for k, (v, itr) in self._latest_scalars.items():
            out[k] = (self._history[k].median(window_size) if self._smoothing_hints[k] else v, itr)
        return out

    def state_dict(self, max_values: int = HISTORY_KEPT) -> Dict[str, dict]:
        """The last `max_values` values of every scalar with its smoothing hint, so that a resumed run's windowed
        medians (the logged losses) continue those of the interrupted run. Tensors and primitives only.

        Returns:
            {name: {"values": float64 (n, 2) tensor of (value, iteration), "smoothing_hint": bool}}.
        """
        out = {}
        for name, buf in self._history.items():
            values = buf.values()[-max_values:]
            out[name] = {
                "values": torch.tensor(values, dtype=torch.float64).reshape(-1, 2),
                "smoothing_hint": self._smoothing_hints.get(name, True),
            }
        return out

    def load_state_dict(self, state: Dict[str, dict]) -> None:
        """Restore histories saved by `state_dict` (before this run's first step)."""
        for name, entry in state.items():
            buf = HistoryBuffer()
            for value, itr in entry["values"].tolist():
                buf.update(value, int(itr))
            self._history[name] = buf
            self._smoothing_hints[name] = bool(entry["smoothing_hint"])

    @property
    def iter(self) -> int:
        """The current iteration (set by the trainer before each step)."""
        return self._iter

    @iter.setter
    def iter(self, val: int) -> None:
        self._iter = int(val)

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        assert _CURRENT_STORAGE_STACK[-1] is self
        _CURRENT_STORAGE_STACK.pop()


class EventWriter:
    """Publishes the content of the current `EventStorage`; `write` is called periodically."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _scalars_since(storage: EventStorage, last_write: int, window_size: int) -> Dict[int, Dict[str, float]]:
    """Scalars put after iteration `last_write`, grouped by iteration (smoothed where hinted)."""
    grouped: Dict[int, Dict[str, float]] = defaultdict(dict)
    for k, (v, itr) in storage.latest_with_smoothing_hint(window_size).items():
        if itr > last_write:
            grouped[itr][k] = v
    return grouped


class _NewScalarsWriter(EventWriter):
    """Publishes each scalar once, grouped by iteration, to an output opened at the first write (a trainer
    built but never run leaves no file behind)."""

    def __init__(self, window_size: int):
        self._window_size = window_size
        self._last_write = -1
        self._out = None

    def _open(self):
        raise NotImplementedError

    def _publish(self, grouped: Dict[int, Dict[str, float]]) -> None:
        raise NotImplementedError

    def write(self) -> None:
        grouped = _scalars_since(get_event_storage(), self._last_write, self._window_size)
        if not grouped:
            return
        if self._out is None:
            self._out = self._open()
        self._publish(grouped)
        self._last_write = max(grouped)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


class JSONWriter(_NewScalarsWriter):
    """Appends one JSON object per iteration with new scalars to `json_file` (detectron2's `metrics.json`):
    `{"iteration": int, "<name>": float, ...}`."""

    def __init__(self, json_file: str, window_size: int = 20):
        super().__init__(window_size)
        self._path = json_file

    def _open(self):
        return open(self._path, "a", encoding="utf-8")

    def _publish(self, grouped: Dict[int, Dict[str, float]]) -> None:
        for itr in sorted(grouped):
            self._out.write(json.dumps({"iteration": itr, **grouped[itr]}, sort_keys=True) + "\n")
        self._out.flush()


class TensorboardXWriter(_NewScalarsWriter):
    """Writes new scalars as TensorBoard events under `log_dir` (torch.utils.tensorboard), purging events of
    earlier runs at or after this run's first iteration (a resumed run replaces what the interrupted one logged
    past its checkpoint)."""

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs):
        super().__init__(window_size)
        self._log_dir = log_dir
        self._kwargs = kwargs

    def _open(self):
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when used

        return SummaryWriter(self._log_dir, **{"purge_step": get_event_storage().start_iter, **self._kwargs})

    def _publish(self, grouped: Dict[int, Dict[str, float]]) -> None:
        for itr in sorted(grouped):
            for k, v in grouped[itr].items():
                self._out.add_scalar(k, v, itr)
        self._out.flush()


class CommonMetricPrinter(EventWriter):
    """Logs one console line per write for the current iteration's training step: ETA, iteration, every loss
    (windowed median), time per iteration, data time, lr, peak memory, and skipped (corrupt) samples if any."""

    def __init__(self, max_iter: int, window_size: int = 20, device: Optional[torch.device] = None):
        self.logger = logging.getLogger("pixelllm_d2.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        self._device = device or torch.device("cpu")

    def _eta(self, storage: EventStorage) -> str:
        if "time" not in storage.histories():
            return ""
        seconds = storage.history("time").median(1000) * (self._max_iter - storage.iter - 1)
        storage.put_scalar("eta_seconds", seconds, smoothing_hint=False)
        return f"eta: {datetime.timedelta(seconds=int(seconds))}  "

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if storage.latest().get("total_loss", (None, None))[1] != iteration:
            return  # no training step finished at this iteration (a final write, or a step that raised)
        hist = storage.histories()

        def med(name):
            return hist[name].median(self._window_size) if name in hist else None

        losses = "  ".join(f"{k}: {med(k):.4g}" for k in sorted(hist) if "loss" in k)
        parts = [f"{self._eta(storage)}iter: {iteration}  {losses}"]
        if med("time") is not None:
            parts.append(f"time: {med('time'):.4f}")
        if med("data_time") is not None:
            parts.append(f"data_time: {med('data_time'):.4f}")
        if "lr" in hist:
            parts.append(f"lr: {hist['lr'].latest():.5g}")
        kind, mib = peak_memory_mib(self._device)
        parts.append(f"{'max_mem' if kind.startswith('cuda') else 'max_rss'}: {mib:.0f}M")
        if "data/num_skipped" in hist and hist["data/num_skipped"].latest() > 0:
            parts.append(f"skipped samples: {int(hist['data/num_skipped'].latest())}")
        self.logger.info("  ".join(parts))


def truncate_json_metrics(json_file: str, last_iter: int) -> None:
    """Drop the lines of iterations after `last_iter` from a metrics.json (atomically): on resume from the
    checkpoint of `last_iter`, what the interrupted run logged later is logged again by the continuation. A line
    that is not a JSON object (the last one, cut by a kill mid-write) is dropped with a warning."""
    from .file_io import atomic_write

    if not os.path.isfile(json_file):
        return
    with open(json_file, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    keep = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            logging.getLogger(__name__).warning("%s: line %d is not a JSON object (cut by a kill?); dropped", json_file, n)
            continue
        if record.get("iteration", -1) <= last_iter:
            keep.append(line if line.endswith("\n") else line + "\n")
    if keep != lines:
        with atomic_write(json_file, "w") as f:
            f.writelines(keep)


def default_writers(output_dir: str, max_iter: int, device: Optional[torch.device] = None) -> List[EventWriter]:
    """Console printer, `output_dir/metrics.json` and TensorBoard events in `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter, device=device),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]
