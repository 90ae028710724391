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
    # wall times are figures to print, not to compare in a test (a loaded machine reorders them)
    assert row["ours_s"] > 0 and row["official_s"] > 0 and row["official_decode_s"] > 0
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


def test_paper_benchmark_rows_and_json_schema(capsys):
    """--task paper on the tiny config (the paper config takes ~25 min and 21 GiB: MODEL_ZOO.md): every row of
    the JSON schema, FLOPs counted in every training and inference row, identical dense-caption tokens."""
    cfg = os.path.join(_ROOT, "configs", "tiny", "pixelllm_tiny.yaml")
    benchmark.run(benchmark.argument_parser().parse_args(["--config-file", cfg, "--task", "paper", "--regions", "4", "--json"]))
    out = json.loads(capsys.readouterr().out)
    assert set(out["machine_peak_flops"]) == {"float32", "bfloat16"} and min(out["machine_peak_flops"].values()) > 0
    assert [(r["phase"], r["task"]) for r in out["rows"]] == [
        ("train", "trace"), ("train", "refer+mask"), ("train", "densecap"),
        ("infer", "caption+trace"), ("infer", "region"), ("infer", "refer+mask"), ("infer", "densecap"),
    ]
    for r in out["rows"]:
        assert {"wall_s", "flops", "mfu", "peak_rss_gib"} <= set(r) and r["wall_s"] > 0 and r["flops"] > 0, r
        assert r["mfu"] == pytest.approx(r["flops"] / r["wall_s"] / out["machine_peak_flops"][r["mfu_of"]])
    # a training step counts forward and backward: more than the inference of the same refer query
    rows = {(r["phase"], r["task"]): r for r in out["rows"]}
    assert rows[("train", "refer+mask")]["flops"] > rows[("infer", "refer+mask")]["flops"]
    d = out["densecap_decode"]
    assert {"regions", "mean_tokens", "ours_s", "official_s", "speedup"} <= set(d)
    assert d["regions"] == 4 and d["identical"] is True and d["speedup"] == pytest.approx(d["official_s"] / d["ours_s"])
    assert out["model"]["optimizer_frozen_params"] == 0
    assert set(out["attention"]["paths"].values()) == {"sdpa"} and {"eager_s", "sdpa_s"} <= set(out["attention"])
