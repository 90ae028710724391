import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def run_analyze(config, *extra):
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "analyze_model.py"), "--config-file", os.path.join(REPO_ROOT, config), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout


def test_paper_scale_counts():
    stats = json.loads(run_analyze("configs/Base-PixelLLM.yaml", "--json"))
    c = stats["components"]
    assert c["backbone.sam"] == {"total": 632_469_248, "trainable": 0}
    assert c["backbone.eva02"] == {"total": 303_753_152, "trainable": 303_753_152}
    assert stats["lora_trainable"] == 18_874_368
    assert c["language.t5"]["trainable"] == 18_874_368  # only LoRA trains in T5
    assert stats["visual_tokens_per_prompt"] == 32
    assert stats["total"] == sum(v["total"] for v in c.values())
    assert stats["trainable"] == sum(v["trainable"] for v in c.values())


def test_table_output_and_overrides():
    out = run_analyze("configs/Base-PixelLLM.yaml", "MODEL.PIXELLLM.EVA02.ENABLED", "False")
    assert "backbone.sam" in out and "632,469,248" in out and "backbone.eva02" not in out


@pytest.mark.parametrize("config", ["configs/variants/prompt_extractor_2layer.yaml", "configs/tiny/pixelllm_tiny.yaml"])
def test_other_configs_build(config):
    stats = json.loads(run_analyze(config, "--json"))
    assert stats["total"] > 0 and "prompt_extractor" in stats["components"]
