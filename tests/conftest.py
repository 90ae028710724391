"""Shared test set-up: offline hub, CPU threads, the repository root and the real-data sample."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VG_SAMPLE = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "vg_sample"))


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def vg_sample():
    if not os.path.isdir(VG_SAMPLE):
        pytest.skip(f"real Visual Genome sample not present at {VG_SAMPLE}")
    return VG_SAMPLE


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Tokenizers built by code are cached per test session, never in the user's home.
    os.environ["PIXELLLM_CACHE"] = str(tmp_path_factory.mktemp("pixelllm_cache"))


_PACKAGE_LOGGERS = ("pixelllm_d2", "fvcore")


@pytest.fixture(scope="session")
def _pristine_loggers():
    import logging

    return {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).level,
                   logging.getLogger(name).propagate) for name in _PACKAGE_LOGGERS}


def _restore_loggers(state):
    import logging

    from pixelllm_d2.utils.logger import setup_logger

    for name, (handlers, level, propagate) in state.items():
        log = logging.getLogger(name)
        for h in log.handlers:
            if h not in handlers and isinstance(h, logging.FileHandler):
                h.close()
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate
    setup_logger.cache_clear()


@pytest.fixture(autouse=True)
def _isolated_loggers(_pristine_loggers):
    # Trainers and tools built in-process (also by module-scoped fixtures) configure the package loggers
    # detectron2-style: own handlers, no propagation, which hides their records from caplog. Every test starts and
    # ends with the loggers as the session found them, so no test depends on which ran before it.
    _restore_loggers(_pristine_loggers)
    yield
    _restore_loggers(_pristine_loggers)
