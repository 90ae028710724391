"""PixelLLM's datasets in detectron2's `DatasetCatalog` / `MetadataCatalog`, under the same names."""
import functools
from typing import Iterable, Optional

from detectron2.data import DatasetCatalog as D2DatasetCatalog
from detectron2.data import MetadataCatalog as D2MetadataCatalog

from ..data import DatasetCatalog, MetadataCatalog

__all__ = ["register_in_detectron2"]


def register_in_detectron2(names: Optional[Iterable[str]] = None) -> None:
    """Mirror PixelLLM's registered datasets (default: all of them) into detectron2's catalogs: detectron2's
    `DatasetCatalog.get(name)` reads PixelLLM's loader (lazily, as PixelLLM does) and `MetadataCatalog.get(name)`
    carries the same metadata (`task`, `evaluator_type`, the source files). A name mirrored again (e.g. after
    PixelLLM re-registered it) replaces the earlier entry."""
    for name in names if names is not None else DatasetCatalog.list():
        if name in D2DatasetCatalog.list():
            D2DatasetCatalog.remove(name)
        if name in D2MetadataCatalog.list():
            D2MetadataCatalog.remove(name)
        D2DatasetCatalog.register(name, functools.partial(DatasetCatalog.get, name))
        meta = {k: v for k, v in MetadataCatalog.get(name).as_dict().items() if k != "name"}
        D2MetadataCatalog.get(name).set(**meta)
