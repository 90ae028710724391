import importlib.util
import json
import os

import pytest
from engine_toy import ToyTrainer, toy_cfg

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("benchmark", os.path.join(_ROOT, "tools", "benchmark.py"))
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


@pytest.fixture
def cfg_files(tmp_path):
    paths = []
    for name, amp in (("fp32", False), ("bf16", True)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(toy_cfg(str(tmp_path / name), SOLVER__AMP__ENABLED=amp).dump())
        paths.append(str(path))
    return paths


def test_train_benchmark_table(cfg_files, capsys):
    args = benchmark.argument_parser().parse_args(["--config-file", *cfg_files, "--iters", "4", "--warmup", "1"])
    rows = benchmark.run(args, trainer_cls=ToyTrainer)
    assert [r["config"] for r in rows] == cfg_files
    for r, amp in zip(rows, ("off", "bfloat16")):
        assert r["task"] == "train" and r["iters"] == 4 and r["amp"] == amp
        assert r["iters_per_s"] > 0 and r["peak_memory_mib"] > 0
        assert r["peak_memory_kind"] == "rss_peak" and r["device"] == "cpu" and r["processes"] == 1
        # 4 images per batch: images/s is 4 x iterations/s.
        assert r["images_per_s"] == pytest.approx(4 * r["iters_per_s"])
    out = capsys.readouterr().out
    assert "| config" in out and "iter/s" in out and "images/s" in out and "peak MiB" in out
    assert not any(f.startswith("model_") for f in os.listdir(os.path.dirname(cfg_files[0])))


def test_train_benchmark_json(cfg_files, capsys):
    args = benchmark.argument_parser().parse_args(["--config-file", cfg_files[0], "--iters", "2", "--json"])
    benchmark.run(args, trainer_cls=ToyTrainer)
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["iters"] == 2 and rows[0]["images_per_s"] > 0


def test_tasks_are_pluggable(cfg_files, capsys):
    @benchmark.register_task("constant")
    def constant(cfg, args, trainer_cls):
        return {"iters": 0, "iters_per_s": 1.0, "images_per_s": 2.0, "peak_memory_mib": 3.0,
                "peak_memory_kind": "none", "device": "cpu", "processes": 1, "amp": "off"}

    try:
        args = benchmark.argument_parser().parse_args(["--config-file", cfg_files[0], "--task", "constant"])
        rows = benchmark.run(args, trainer_cls=ToyTrainer)
        assert rows[0]["task"] == "constant" and rows[0]["images_per_s"] == 2.0
    finally:
        del benchmark.TASKS["constant"]
