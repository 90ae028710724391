import importlib.util
import json
import os

import pytest
import torch
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
    # one config prints its object, several a list of them
    args = benchmark.argument_parser().parse_args(["--config-file", cfg_files[0], "--iters", "2", "--json"])
    benchmark.run(args, trainer_cls=ToyTrainer)
    row = json.loads(capsys.readouterr().out)
    assert row["config"] == cfg_files[0] and row["iters"] == 2 and row["images_per_s"] > 0
    args = benchmark.argument_parser().parse_args(["--config-file", *cfg_files, "--iters", "1", "--json"])
    benchmark.run(args, trainer_cls=ToyTrainer)
    assert [r["config"] for r in json.loads(capsys.readouterr().out)] == cfg_files


def test_densecap_benchmark_times_both_decoders_on_the_same_regions(capsys):
    cfg = os.path.join(_ROOT, "configs", "tiny", "pixelllm_tiny_densecap.yaml")
    argv = ["--config-file", cfg, "--task", "densecap", "--regions", "6", "--iters", "1", "--warmup", "0"]
    short = ["MODEL.PIXELLLM.DECODE.MAX_LEN", "5"]
    benchmark.run(benchmark.argument_parser().parse_args(argv + ["--json"] + short))
    row = json.loads(capsys.readouterr().out)
    assert row["task"] == "densecap" and row["regions"] == 6 and row["device"] == "cpu"
    assert row["ours_s"] > 0 and row["official_s"] >= row["official_decode_s"] > 0
    assert row["speedup"] == pytest.approx(row["official_s"] / row["ours_s"])
    # the same weights and prompts: the cached decode must give exactly the recomputed tokens
    assert row["identical"] is True and 1 <= row["mean_tokens"] <= 5
    benchmark.run(benchmark.argument_parser().parse_args(argv + short))
    out = capsys.readouterr().out
    assert "speedup" in out and "official s" in out


def test_region_boxes_lie_inside_the_image():
    boxes = benchmark._region_boxes(50, 30, 40, seed=1)
    assert boxes.shape == (50, 4)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 40 + 1e-4).all() and (boxes[:, 3] <= 30 + 1e-4).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert torch.equal(boxes, benchmark._region_boxes(50, 30, 40, seed=1))


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
