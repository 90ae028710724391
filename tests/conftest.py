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
