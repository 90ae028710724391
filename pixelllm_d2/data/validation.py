"""Checks shared by the dataset loaders and `tools/validate_dataset.py`.

A loader meets two kinds of trouble:
- a bad *file* (missing, not JSON, wrong top-level layout): `DatasetFileError`, naming the file;
- a bad *record* (missing field, NaN or negative box, empty caption, one-point trace, ...): the record is skipped,
  and a `Problem` naming the file and the record is added to a `ValidationReport`; the loader logs the report's
  summary. The validator runs the same loader with the same report, adds image checks, and prints everything.
"""
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    "DatasetFileError",
    "DuplicateIdError",
    "UniqueIds",
    "check_id",
    "Problem",
    "ValidationReport",
    "check_xywh_box",
    "check_text",
    "caption_problem",
    "check_image_file",
    "require_fields",
    "last_load_report",
]

logger = logging.getLogger(__name__)


class DatasetFileError(ValueError):
    """A dataset file that cannot be used at all (missing, unparsable, wrong layout, repeated ids)."""


class DuplicateIdError(DatasetFileError):
    """Records that repeat an id (image, region, sentence, ...). Never skipped: evaluation and the regrouping of
    annotations per image match records by id, so a repeat would score or attach the wrong record. The problems
    are also in the load's `ValidationReport` (kind "duplicate id")."""


@dataclass(frozen=True)
class Problem:
    """One bad record: `file` it came from, `record` (e.g. "annotations[12] (id 345)"), `kind` (a short category
    used in counts, e.g. "bad box"), and a human-readable `message`."""

    file: str
    record: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.record}: {self.kind}: {self.message}"


class ValidationReport:
    """Collects the problems met while reading one dataset.

    Args:
        source: what is being read (a dataset name or a file), used in summaries.
    """

    def __init__(self, source: str = ""):
        self.source = source
        self.problems: List[Problem] = []
        self.num_records = 0  # records read (images, for per-image formats)

    def add(self, file: str, record: str, kind: str, message: str) -> None:
        self.problems.append(Problem(str(file), record, kind, message))

    def __len__(self) -> int:
        return len(self.problems)

    @property
    def counts(self) -> Dict[str, int]:
        """Number of problems per kind."""
        return dict(Counter(p.kind for p in self.problems))

    def summary(self) -> str:
        if not self.problems:
            return f"{self.source}: {self.num_records} records, no problems"
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.counts.items()))
        return f"{self.source}: {self.num_records} records, {len(self.problems)} skipped or invalid ({kinds})"

    def log(self, log: logging.Logger = logger, max_items: int = 10) -> None:
        """Warn about the first `max_items` problems and the summary; info only when there is nothing wrong."""
        if not self.problems:
            log.info(self.summary())
            return
        for p in self.problems[:max_items]:
            log.warning(f"skipped: {p}")
        if len(self.problems) > max_items:
            log.warning(f"... and {len(self.problems) - max_items} more")
        log.warning(self.summary())


# The report of the latest load of each registered dataset, for `get_detection_dataset_dicts`' summary.
_LOAD_REPORTS: Dict[str, ValidationReport] = {}


def remember_load_report(dataset_name: Optional[str], report: ValidationReport) -> None:
    if dataset_name:
        _LOAD_REPORTS[dataset_name] = report


def last_load_report(dataset_name: str) -> Optional[ValidationReport]:
    """The `ValidationReport` of the latest load of `dataset_name` in this process, or None."""
    return _LOAD_REPORTS.get(dataset_name)


def require_fields(record: dict, fields: Sequence[str]) -> Optional[str]:
    """None when `record` is a dict holding every field, else a message naming the missing ones."""
    if not isinstance(record, dict):
        return f"expected an object, got {type(record).__name__}"
    missing = [f for f in fields if f not in record]
    return f"missing field(s) {missing}" if missing else None


def check_id(value, what: str = "id") -> Optional[str]:
    """None for a usable id (an integer or a non-empty string), else a message. Ids are dictionary keys and
    file-name parts: floats, lists, objects and null are refused rather than crashing a lookup later."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip()):
        return f"{what} must be an integer or a non-empty string, got {_short(value)}"
    return None


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


DUPLICATE_ID = "duplicate id"


class UniqueIds:
    """The first record of every id of one kind in one file; a repeat is a "duplicate id" problem, which
    `raise_on_duplicates` turns into a `DuplicateIdError` once the file has been read.

    Args:
        file: the file the ids come from. what: what the ids name ("image id", "region id", ...).
    """

    def __init__(self, file: str, what: str):
        self.file = file
        self.what = what
        self._first: Dict[object, str] = {}

    def add(self, value, record: str, report: "ValidationReport") -> bool:
        """Remember `value` (a checked id) of `record`; False (and a problem in `report`) when it repeats."""
        if value in self._first:
            report.add(self.file, record, DUPLICATE_ID, f"{self.what} {value!r} repeats {self._first[value]}")
            return False
        self._first[value] = record
        return True


def raise_on_duplicates(report: "ValidationReport") -> None:
    """Raise `DuplicateIdError` naming the first repeated ids (file and record) if the report has any."""
    dups = [p for p in report.problems if p.kind == DUPLICATE_ID]
    if dups:
        shown = "; ".join(f"{p.file}: {p.record}: {p.message}" for p in dups[:5])
        more = f" (and {len(dups) - 5} more)" if len(dups) > 5 else ""
        raise DuplicateIdError(
            f"{len(dups)} repeated id(s), which are never skipped because evaluation matches records by id: "
            f"{shown}{more}. Make the ids unique (tools/validate_dataset.py lists them all)."
        )


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_xywh_box(
    bbox, width: float, height: float
) -> Tuple[Optional[List[float]], Optional[str]]:
    """Validate an [x, y, w, h] pixel box and return it as XYXY clipped to the image.

    A box partly outside the image is clipped (annotation tools often overshoot by a pixel); a box that is not four
    finite numbers, has a negative or zero width/height, or lies entirely outside the image is an error.

    Returns:
        (xyxy, None) for a usable box, (None, message) otherwise.
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
    if not all(_finite_number(v) for v in bbox):
        return None, f"bbox has non-finite or non-numeric values: {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None, f"bbox has non-positive width or height: {bbox!r}"
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None, f"bbox {bbox!r} lies outside the {width:g}x{height:g} image"
    return [x0, y0, x1, y1], None


EMPTY_TEXT = "empty text"


def check_text(text) -> Tuple[Optional[str], Optional[str]]:
    """(text with white space collapsed, None) for a non-empty string, (None, message) otherwise."""
    if not isinstance(text, str):
        return None, f"expected a string, got {type(text).__name__}"
    text = " ".join(text.split())
    if not text:
        return None, EMPTY_TEXT
    return text, None


def caption_problem(message: str) -> str:
    """The problem kind of a `check_text` message about a caption / expression."""
    return "empty caption" if message == EMPTY_TEXT else "bad caption"


def check_image_size(width, height) -> Optional[str]:
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        return f"width/height must be positive integers, got {_short(width)} x {_short(height)}"
    return None


def check_image_file(path: str, width: Optional[int] = None, height: Optional[int] = None) -> Optional[str]:
    """None when `path` exists, decodes completely and (when given) has the size `width` x `height` after EXIF
    orientation; otherwise a message saying what is wrong."""
    from .detection_utils import ImageReadError, read_image

    if not os.path.isfile(path):
        return "image file does not exist"
    try:
        img = read_image(path)
    except ImageReadError as e:
        return str(e.reason)
    if width is not None and height is not None and (img.shape[1], img.shape[0]) != (width, height):
        return f"image is {img.shape[1]}x{img.shape[0]} but the annotation says {width}x{height}"
    return None
