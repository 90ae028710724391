import glob
import os

import pytest

from pixelllm_d2.config import CfgNode, ConfigError, configurable, get_cfg

from .conftest import REPO_ROOT

CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_every_shipped_config_merges(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.META_ARCHITECTURE == "PixelLLM"


def test_base_inheritance_and_overrides(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: "{os.path.join(REPO_ROOT, "configs", "Base-PixelLLM.yaml")}"\nINPUT:\n  IMAGE_SIZE: 224\n')
    cfg = get_cfg()
    cfg.merge_from_file(str(child))
    assert cfg.INPUT.IMAGE_SIZE == 224 and cfg.MODEL.PIXELLLM.SAM.SIZE == "vit_h"
    cfg.merge_from_list(["SOLVER.BASE_LR", "0.5", "MODEL.PIXELLLM.LANGUAGE.LORA.RANK", "8"])
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.MODEL.PIXELLLM.LANGUAGE.LORA.RANK == 8
    with pytest.raises(ConfigError, match=r"unknown config key MODEL.NO_SUCH_KEY \(in the command-line overrides\)"):
        cfg.merge_from_list(["MODEL.NO_SUCH_KEY", "1"])
    with pytest.raises(ConfigError, match=r"unknown config key SOLVER.MAXITER .*; did you mean SOLVER.MAX_ITER\?"):
        cfg.merge_from_list(["SOLVER.MAXITER", "1"])


def test_unsafe_yaml_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("INPUT:\n  IMAGE_SIZE: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(Exception):
        get_cfg().merge_from_file(str(bad))


def test_every_default_key_is_commented():
    # detectron2's defaults.py comments its keys; ours must too (a comment line above, or a sub-node header).
    path = os.path.join(REPO_ROOT, "pixelllm_d2", "config", "defaults.py")
    lines = open(path).read().splitlines()
    missing = []
    for i, line in enumerate(lines):
        if line.startswith("_C.") and " = " in line and "CfgNode(" not in line and line.split(" = ")[0].count(".") >= 1:
            j = i - 1
            while j >= 0 and lines[j].startswith("_C.") and "CfgNode(" not in lines[j]:
                j -= 1  # a comment may describe a group of consecutive keys
            if not (lines[j].lstrip().startswith("#") or "CfgNode(" in lines[j]):
                missing.append(line)
    assert not missing, "keys without a comment:\n" + "\n".join(missing)


class _Toy:
    @configurable
    def __init__(self, *, width: int, depth: int = 2):
        self.width, self.depth = width, depth

    @classmethod
    def from_config(cls, cfg):
        return dict(width=cfg.MODEL.PIXELLLM.PROMPT_EXTRACTOR.WIDTH)


def test_configurable_builds_from_cfg_or_kwargs():
    assert _Toy(get_cfg()).width == 512
    assert _Toy(width=3, depth=4).depth == 4
    assert isinstance(get_cfg(), CfgNode)
