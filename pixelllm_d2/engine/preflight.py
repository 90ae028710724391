"""Checks run before the first iteration, so that a run does not train for hours and then fail on something that
was knowable at the start: OUTPUT_DIR writable and not holding another run, the datasets of DATASETS.TRAIN registered
and those of DATASETS.TEST registered and readable, and Java where evaluation will need it (METEOR, the PTB
tokenizer). The training datasets are not read here: the training loader reads them before the first iteration, and
reading them twice would cost start-up time (minutes of JSON for Visual Genome / Localized Narratives)."""
import logging
import os
import shutil
import tempfile

from ..utils import comm

__all__ = ["preflight", "JAVA_EVALUATORS"]

logger = logging.getLogger(__name__)

# evaluator_type -> what needs Java: METEOR (unless TEST.SKIP_METEOR) or the caption metrics' PTB tokenizer (always:
# location-conditioned and image captions)
JAVA_EVALUATORS = {"densecap": "meteor", "loca": "always", "caption": "always"}


def _check_output_dir(output_dir: str) -> None:
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".preflight"):
            pass
    except OSError as e:
        raise PermissionError(f"OUTPUT_DIR {output_dir} is not writable: {e.strerror or e}") from e


def _check_not_another_run(output_dir: str, resume: bool, overwrite: bool) -> None:
    marker = os.path.join(output_dir, "last_checkpoint")
    if resume or overwrite or not os.path.isfile(marker):
        return
    with open(marker) as f:
        last = f.read().strip()
    raise ValueError(
        f"OUTPUT_DIR {output_dir} already holds a run (last checkpoint {last}): continue it with --resume, start it "
        f"over with --overwrite, or set another OUTPUT_DIR"
    )


def _check_java(cfg) -> None:
    from ..data import MetadataCatalog
    from ..evaluation.text_metrics import JAVA_INSTALL_HINT

    if shutil.which("java") is not None:
        return
    needs = []
    for name in cfg.DATASETS.TEST:
        what = JAVA_EVALUATORS.get(getattr(MetadataCatalog.get(name), "evaluator_type", None))
        if what == "always" or (what == "meteor" and not cfg.TEST.SKIP_METEOR):
            needs.append(name)
    if needs:
        raise FileNotFoundError(
            f"evaluating {', '.join(needs)} needs Java (METEOR / the PTB tokenizer of pycocoevalcap) and no `java` is "
            f"on PATH: {JAVA_INSTALL_HINT}; or evaluate without Java: TEST.SKIP_METEOR True and no caption datasets "
            f"(loca / captions: their PTB tokenizer always needs Java) in DATASETS.TEST"
        )


def preflight(cfg, train: bool = True, resume: bool = False, overwrite: bool = False, check_datasets: bool = True) -> None:
    """Raise a one-line error (ValueError, FileNotFoundError, PermissionError, KeyError) for the first problem
    found, on every process (the main process checks; the others wait for its verdict); log what was checked.

    Args:
        cfg: the run's config.
        train: a training run (OUTPUT_DIR must not hold another run; the names of DATASETS.TRAIN must be registered).
        resume, overwrite: the command line's --resume / --overwrite.
        check_datasets: read the datasets from `DatasetCatalog` (a trainer with its own loaders turns it off).
    """
    failure = None
    if comm.is_main_process():
        try:
            _run_checks(cfg, train, resume, overwrite, check_datasets)
        except (ValueError, KeyError, OSError) as e:
            failure = e
    verdict = comm.all_gather(failure)[0]  # the main process's, on every process
    if failure is not None:
        raise failure  # the original, with its traceback
    if verdict is not None:
        raise verdict


def _run_checks(cfg, train: bool, resume: bool, overwrite: bool, check_datasets: bool) -> None:
    from ..data import DatasetCatalog

    if cfg.OUTPUT_DIR:
        _check_output_dir(cfg.OUTPUT_DIR)
        if train:
            _check_not_another_run(cfg.OUTPUT_DIR, resume, overwrite)
    if check_datasets and train:
        missing = [n for n in cfg.DATASETS.TRAIN if n not in DatasetCatalog]
        if missing:
            DatasetCatalog.get(missing[0])  # raises the catalog's KeyError, which lists the registered names
    sizes = {}
    for name in dict.fromkeys(cfg.DATASETS.TEST if check_datasets else ()):
        try:
            sizes[name] = len(DatasetCatalog.get(name))
        except KeyError as e:  # not registered: the catalog's message lists the registered names
            raise KeyError(e.args[0] if e.args else str(e)) from None
    _check_java(cfg)
    logger.info("Preflight: OUTPUT_DIR writable, evaluation datasets readable (%s), Java %s",
                ", ".join(f"{k}: {v} records" for k, v in sizes.items()), "found" if shutil.which("java") else "not needed")
