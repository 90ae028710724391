"""Fixtures of the data tests: a small shapes benchmark in a temporary root, a CPU-sized config, and
tools/validate_dataset.py as a module."""
import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from pixelllm_d2 import get_cfg  # noqa: E402
from pixelllm_d2.data import register_all_shapes  # noqa: E402

NUM_TRAIN, NUM_VAL = 20, 6


@pytest.fixture(scope="module")  # restored after each module: later tests see the real shapes datasets
def shapes_root(tmp_path_factory):
    """A dataset root whose `shapes_*` datasets are registered at 20 train / 6 val images (generated on first
    use); the default registration is restored afterwards."""
    root = str(tmp_path_factory.mktemp("datasets"))
    register_all_shapes(root, NUM_TRAIN, NUM_VAL)
    yield root
    register_all_shapes()


@pytest.fixture
def cfg():
    c = get_cfg()
    c.MODEL.PIXELLLM.LANGUAGE.TOKENIZER = "shapes"
    # the shapes tokenizer's words only (as the shapes config): no official prompt pools, its caption prompt
    c.MODEL.PIXELLLM.PROMPTS.CAPTION = "A short image caption: "
    c.MODEL.PIXELLLM.TRAIN_PROMPTS.TRACE = []
    c.MODEL.PIXELLLM.TRAIN_PROMPTS.CAPTION = []
    c.INPUT.IMAGE_SIZE = 128
    c.DATALOADER.NUM_WORKERS = 0
    c.SOLVER.IMS_PER_BATCH = 4
    c.TEST.IMS_PER_BATCH = 4
    return c


@pytest.fixture(scope="module")
def tool():
    """tools/validate_dataset.py, imported as a module (its `main(argv)` returns the exit status)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools", "validate_dataset.py")
    spec = importlib.util.spec_from_file_location("validate_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
