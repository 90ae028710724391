"""Training and test data loaders.

Training batches are a pure function of (seed, iteration): global batch k draws its source dataset(s) and image
indices from a generator seeded with (seed, k), and sample i of it is mapped with a generator seeded with
(seed, k, i). Rank r of W maps the slice [r*B/W, (r+1)*B/W) of every global batch; DataLoader workers take the
iterations round-robin, so the stream is the same for any number of workers, any world size (concatenating the
ranks' slices gives the 1-process batch) and any resume point (`start_iter`).

Image indices follow a per-source epoch order: the j-th image drawn from a source of N images is element j % N of
a permutation seeded with (seed, source, j // N), so every image is seen once per epoch of that source.
"""
import itertools
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..tasks import get_task
from ..utils.nested import map_leaves
from .catalog import DatasetCatalog, MetadataCatalog
from .dataset_mapper import DatasetMapper
from .detection_utils import DataError
from .validation import last_load_report

__all__ = ["get_detection_dataset_dicts", "build_train_loader", "build_test_loader", "TrainLoader", "without_holdout_images"]

logger = logging.getLogger(__name__)

# Domain tags of the seed sequences, so the streams of different purposes never coincide.
_PLAN, _SAMPLE, _PERMUTATION, _REPLACEMENT = 0, 1, 2, 3
# Attempts at replacing an unreadable sample before giving up.
_MAX_REPLACEMENTS = 50


def _identity(batch):
    return batch


class _Array:
    """A tensor crossing from a loader worker to the main process as a numpy array: pickled into the pipe in one
    piece, whereas torch sends every tensor through its own shared-memory file descriptor (~0.5 ms each on CPU,
    ~40 tensors per batch) and the main process then page-faults the shared pages in."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


def _to_pipe(obj):
    """`obj` with its numpy-representable CPU tensors wrapped as `_Array` (inside dicts, lists and tuples)."""

    def wrap(x):
        if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dtype != torch.bfloat16 and not x.requires_grad:
            return _Array(x.numpy())
        return x

    return map_leaves(obj, wrap)


def _from_pipe(obj):
    """Undo `_to_pipe` (the arrays become tensors without a copy)."""
    return map_leaves(obj, lambda x: torch.from_numpy(x.array) if isinstance(x, _Array) else x)


def _has_annotations(d: dict) -> bool:
    for key in ("narratives", "captions", "annotations"):
        if key in d:
            return len(d[key]) > 0
    return False


def get_detection_dataset_dicts(names: Union[str, Sequence[str]], filter_empty: bool = True) -> List[dict]:
    """Load and concatenate the dataset dicts of `names`, logging each dataset's skipped records and a summary.

    Args:
        names: registered dataset name(s).
        filter_empty: drop images without any usable annotation (narratives / captions / regions / refs).

    Returns:
        The dataset dicts, in order.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("no dataset names given")
    out = []
    for name in names:
        dicts = DatasetCatalog.get(name)
        if not dicts:
            raise ValueError(f"dataset {name!r} is empty")
        kept = [d for d in dicts if _has_annotations(d)] if filter_empty else dicts
        report = last_load_report(name)
        skipped = f", {len(report)} records skipped while loading" if report is not None else ""
        logger.info(
            f"dataset {name}: {len(kept)} images"
            + (f" ({len(dicts) - len(kept)} without annotations removed)" if len(kept) < len(dicts) else "")
            + skipped
        )
        if not kept:
            raise ValueError(f"dataset {name!r} has no image with annotations")
        out.extend(kept)
    return out


def without_holdout_images(name: str, dicts: List[dict], holdout: Sequence[str]) -> List[dict]:
    """`dicts` of training dataset `name` without the images (by image id) of the held-out datasets of its task
    (DATASETS.TRAIN_HOLDOUT): e.g. RefCOCO train without every image of a RefCOCO / + / g val or test split."""
    task = MetadataCatalog.get(name).task
    held = [h for h in holdout if MetadataCatalog.get(h).get("task") == task]
    if not held:
        return dicts
    ids = {d["image_id"] for h in held for d in DatasetCatalog.get(h)}
    kept = [d for d in dicts if d["image_id"] not in ids]
    logger.info(f"dataset {name}: {len(dicts) - len(kept)} of {len(dicts)} images removed: they are in held-out "
                f"{', '.join(held)} (DATASETS.TRAIN_HOLDOUT)")
    if not kept:
        raise ValueError(f"dataset {name!r}: every image is in a held-out dataset ({', '.join(held)})")
    return kept


def _dist_info(rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _BatchPlan:
    """Which (source, image index) every sample of global batch k uses (see the module docstring)."""

    def __init__(self, sizes: Sequence[int], ratios: Sequence[float], batch_size: int, mix: bool, seed: int):
        self.sizes = list(sizes)
        self.probs = np.asarray(ratios, dtype=np.float64) / float(np.sum(ratios))
        self.batch_size = batch_size
        self.mix = mix
        self.seed = seed
        self._counts_at = (0, np.zeros(len(self.sizes), dtype=np.int64))  # draws per source before batch k
        self._perms: Dict[Tuple[int, int], np.ndarray] = {}

    def _sources(self, k: int) -> np.ndarray:
        if len(self.sizes) == 1:
            return np.zeros(self.batch_size, dtype=np.int64)
        rng = np.random.default_rng([self.seed, _PLAN, k])
        if self.mix:
            return rng.choice(len(self.sizes), size=self.batch_size, p=self.probs)
        return np.full(self.batch_size, rng.choice(len(self.sizes), p=self.probs), dtype=np.int64)

    def _counts_before(self, k: int) -> np.ndarray:
        if len(self.sizes) == 1:
            return np.array([k * self.batch_size], dtype=np.int64)
        at, counts = self._counts_at
        if k < at:
            at, counts = 0, np.zeros(len(self.sizes), dtype=np.int64)
        counts = counts.copy()
        for j in range(at, k):  # replay the source draws of the batches in between
            counts += np.bincount(self._sources(j), minlength=len(self.sizes))
        self._counts_at = (k, counts)
        return counts

    def _index(self, source: int, position: int) -> int:
        n = self.sizes[source]
        epoch = position // n
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.sizes):
                self._perms.clear()
            self._perms[key] = np.random.default_rng([self.seed, _PERMUTATION, source, epoch]).permutation(n)
        return int(self._perms[key][position % n])

    def __call__(self, k: int) -> List[Tuple[int, int]]:
        sources = self._sources(k)
        counts = self._counts_before(k).copy()
        out = []
        for s in sources:
            out.append((int(s), self._index(int(s), int(counts[s]))))
            counts[s] += 1
        return out


class _TrainStream(IterableDataset):
    """Yields (k, this rank's slice of global batch k mapped, skipped file names) for k = start_iter, ...; worker
    w of n yields the iterations k with (k - start_iter) % n == w."""

    def __init__(self, dicts, mappers, plan: _BatchPlan, start_iter: int, rank: int, world_size: int):
        self.dicts = dicts
        self.mappers = mappers
        self.plan = plan
        self.start_iter = start_iter
        self.lo = rank * plan.batch_size // world_size
        self.hi = (rank + 1) * plan.batch_size // world_size

    def _map(self, k: int, i: int, source: int, index: int, skipped: List[str]):
        seed = self.plan.seed
        replace_rng = np.random.default_rng([seed, _REPLACEMENT, k, i])
        for _ in range(_MAX_REPLACEMENTS):
            d = self.dicts[source][index]
            try:
                return self.mappers[source](d, np.random.default_rng([seed, _SAMPLE, k, i]))
            except DataError as e:
                skipped.append(f"{d['file_name']} ({e})")
                index = int(replace_rng.integers(len(self.dicts[source])))
        raise RuntimeError(
            f"{_MAX_REPLACEMENTS} unreadable samples in a row at iteration {k}; last: {skipped[-1]}. "
            "Check the dataset with tools/validate_dataset.py"
        )

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:  # parallelism comes from the workers
            torch.set_num_threads(1)
        for k in itertools.count(self.start_iter + wid, nw):
            pairs = self.plan(k)
            skipped: List[str] = []
            batch = [self._map(k, i, s, idx, skipped) for i, (s, idx) in enumerate(pairs) if self.lo <= i < self.hi]
            yield k, (_to_pipe(batch) if info is not None else batch), skipped


class TrainLoader:
    """Infinite iterable of training batches (lists of mapped dicts), see `build_train_loader`. Each `iter()`
    starts again at `start_iter`; iterate once and keep the iterator.

    Attributes:
        num_skipped: samples replaced so far because their image could not be read (main process count).
        skipped_files: the most recent of them (at most 100), with the reason.
    """

    def __init__(self, stream: _TrainStream, num_workers: int):
        self.stream = stream
        self.num_workers = num_workers
        self.num_skipped = 0
        self.skipped_files: List[str] = []

    def __iter__(self) -> Iterator[List[dict]]:
        # The DataLoader and its iterator are created here, eagerly, with their own generator: torch draws the
        # workers' base seed when the iterator is created, and drawing it from the global RNG at the first
        # `next()` (after a resume restored the RNG states) shifted every later random draw of the run.
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            generator=torch.Generator().manual_seed(self.stream.plan.seed),
        )
        return self._batches(iter(loader))

    def _batches(self, loader_iter) -> Iterator[List[dict]]:
        expected = self.stream.start_iter
        for k, batch, skipped in loader_iter:
            if k != expected:  # workers take iterations round-robin; anything else is a bug
                raise RuntimeError(f"training loader produced iteration {k}, expected {expected}")
            expected += 1
            for s in skipped:
                logger.warning(f"iteration {k}: replaced an unreadable sample: {s}")
            self.num_skipped += len(skipped)
            self.skipped_files = (self.skipped_files + skipped)[-100:]
            yield _from_pipe(batch)


def build_train_loader(
    cfg,
    start_iter: int = 0,
    seed: Optional[int] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    mappers: Optional[Sequence] = None,
) -> TrainLoader:
    """Training batches for `cfg.DATASETS.TRAIN`.

    Args:
        cfg: reads DATASETS.TRAIN / TRAIN_RATIOS / TRAIN_HOLDOUT, SOLVER.IMS_PER_BATCH (global batch), DATALOADER.NUM_WORKERS /
            MIX_TASKS_IN_BATCH / FILTER_EMPTY_ANNOTATIONS, and the mapper's keys.
        start_iter: the first iteration to produce (resume).
        seed: the run's resolved seed; None: cfg.SEED, or 0 (with a warning) when that is negative.
        rank, world_size: this process's share; None: from torch.distributed (0 / 1 when not initialised).
        mappers: one callable `(dataset_dict, rng) -> dict` per training dataset; None: `DatasetMapper(cfg, True,
            task=<the dataset's metadata task>)`.

    Returns:
        A `TrainLoader`; each iteration over it yields rank's slice (IMS_PER_BATCH / world_size mapped dicts) of
        global batches start_iter, start_iter + 1, ...
    """
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty")
    ratios = list(cfg.DATASETS.TRAIN_RATIOS) or [1.0] * len(names)
    if len(ratios) != len(names) or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"DATASETS.TRAIN_RATIOS {ratios} must be non-negative, one per DATASETS.TRAIN {names}")
    if seed is None:
        seed = cfg.SEED
        if seed < 0:
            logger.warning("build_train_loader: no seed given and cfg.SEED < 0; using seed 0")
            seed = 0
    rank, world_size = _dist_info(rank, world_size)
    batch_size = cfg.SOLVER.IMS_PER_BATCH
    if batch_size % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({batch_size}) must be divisible by the world size ({world_size})")
    filter_empty = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    dicts = [get_detection_dataset_dicts(n, filter_empty=filter_empty) for n in names]
    if cfg.DATASETS.TRAIN_HOLDOUT:
        dicts = [without_holdout_images(n, d, cfg.DATASETS.TRAIN_HOLDOUT) for n, d in zip(names, dicts)]
    if mappers is None:
        mappers = [DatasetMapper(cfg, is_train=True, task=MetadataCatalog.get(n).task) for n in names]
    plan = _BatchPlan([len(d) for d in dicts], ratios, batch_size, cfg.DATALOADER.MIX_TASKS_IN_BATCH, int(seed))
    stream = _TrainStream(dicts, list(mappers), plan, start_iter, rank, world_size)
    return TrainLoader(stream, cfg.DATALOADER.NUM_WORKERS)


class _MappedList(torch.utils.data.Dataset):
    def __init__(self, dicts, mapper):
        self.dicts = dicts
        self.mapper = mapper

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        return self.mapper(self.dicts[i])


def _shard(n: int, rank: int, world_size: int) -> range:
    """detectron2's InferenceSampler split: contiguous shards, the first n % world_size one longer."""
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


def build_test_loader(
    cfg,
    dataset_name: str,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    mapper=None,
) -> DataLoader:
    """Batches of TEST.IMS_PER_BATCH mapped dicts of `dataset_name`, this rank's contiguous shard (every image
    exactly once over all ranks), in dataset order. Images without annotations are kept only for densecap (where
    they still get detections). An unreadable image is an error naming the file.

    Args:
        cfg: reads TEST.IMS_PER_BATCH, DATALOADER.NUM_WORKERS and the mapper's keys.
        dataset_name: a registered name; its metadata's task selects the mapper.
        rank, world_size: this process's shard; None: from torch.distributed.
        mapper: callable dict -> model input; None: `DatasetMapper(cfg, is_train=False, task=...)`.
    """
    task = MetadataCatalog.get(dataset_name).task
    # images without annotations still get detections: kept for the detector's task only
    dicts = get_detection_dataset_dicts(dataset_name, filter_empty=get_task(task).queries != "detector")
    rank, world_size = _dist_info(rank, world_size)
    shard = [dicts[i] for i in _shard(len(dicts), rank, world_size)]
    mapper = mapper if mapper is not None else DatasetMapper(cfg, is_train=False, task=task)
    return DataLoader(
        _MappedList(shard, mapper),
        batch_size=cfg.TEST.IMS_PER_BATCH,
        shuffle=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=_identity,
    )
