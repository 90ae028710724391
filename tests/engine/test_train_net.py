"""tools/train_net.py end to end in subprocesses (toy model): kill -9 and exact resume, no torn checkpoint,
multi-process DDP / FSDP on CPU (gloo), --eval-only."""
import json
import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from engine_toy import toy_cfg

from pixelllm_d2.engine.checkpoint import load_safetensors

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(HERE, "engine_toy_train.py")


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for k in ("ENGINE_TEST_KILL_AT_ITER", "ENGINE_TEST_KILL_AT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _run(cfg_file, *args, env=None, launcher=(), expect_rc=0):
    cmd = [*launcher] if launcher else [sys.executable]
    p = subprocess.run(
        [*cmd, SCRIPT, "--config-file", cfg_file, *args], env=env or _env(), capture_output=True, text=True, timeout=180
    )
    if expect_rc is not None and p.returncode != expect_rc:
        raise AssertionError(f"rc={p.returncode}, expected {expect_rc}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _write_cfg(folder, **overrides):
    os.makedirs(folder, exist_ok=True)
    cfg = toy_cfg(os.path.join(folder, "out"), **overrides)
    path = os.path.join(folder, "cfg.yaml")
    with open(path, "w") as f:
        f.write(cfg.dump())
    return path, cfg.OUTPUT_DIR


def _final_weights(out):
    return load_safetensors(os.path.join(out, "model_final.safetensors"))


def _assert_identical_runs(out_a, out_b):
    wa, wb = _final_weights(out_a), _final_weights(out_b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"
    oa = torch.load(os.path.join(out_a, "model_final.pth"), weights_only=True)["optimizer"]
    ob = torch.load(os.path.join(out_b, "model_final.pth"), weights_only=True)["optimizer"]
    for i in oa["state"]:
        for name, v in oa["state"][i].items():
            assert torch.equal(v, ob["state"][i][name]), (i, name)


def _losses(out):
    with open(os.path.join(out, "metrics.json")) as f:
        lines = [json.loads(line) for line in f]
    iters = [m["iteration"] for m in lines if "total_loss" in m]
    assert iters == sorted(set(iters)), "one line per iteration, in order (also after a resume)"
    return {m["iteration"]: m["total_loss"] for m in lines if "total_loss" in m}


# 12 iterations, checkpoints after iterations 3, 7, 11; dropout on, so the RNG states matter.
DETERMINISTIC_RUN = dict(DETERMINISTIC=True, SOLVER__MAX_ITER=12, SOLVER__CHECKPOINT_PERIOD=4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run."""
    cfg_file, out = _write_cfg(str(tmp_path_factory.mktemp("reference")), **DETERMINISTIC_RUN)
    _run(cfg_file)
    return cfg_file, out


def _check_no_torn_checkpoint(out):
    """Every checkpoint under its final name loads completely, and last_checkpoint names one of them."""
    with open(os.path.join(out, "last_checkpoint")) as f:
        last = f.read()
    assert os.path.isfile(os.path.join(out, last))
    for name in os.listdir(out):
        if name.endswith(".pth"):
            ckpt = torch.load(os.path.join(out, name), weights_only=True)
            assert {"model", "optimizer", "scheduler", "trainer", "iteration"} <= set(ckpt)
    return last


# A random iteration (fixed seed for reproducibility) and iteration 7, whose checkpoint the kill prevents.
@pytest.mark.parametrize("kill_iter", [random.Random(0).choice([i for i in range(11) if i != 7]), 7])
def test_kill_at_iteration_then_resume_is_bit_identical(reference, tmp_path, kill_iter):
    cfg_file, out = _write_cfg(str(tmp_path), **DETERMINISTIC_RUN)
    _run(cfg_file, env=_env(ENGINE_TEST_KILL_AT_ITER=str(kill_iter)), expect_rc=-signal.SIGKILL)
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    last_ckpt = [f"model_{i:07d}.pth" for i in (3, 7) if i < kill_iter]
    if last_ckpt:
        assert _check_no_torn_checkpoint(out) == last_ckpt[-1]
    p = _run(cfg_file, "--resume")
    start = int(last_ckpt[-1][6:13]) + 1 if last_ckpt else 0
    assert f"Starting training from iteration {start}" in p.stdout
    _assert_identical_runs(reference[1], out)
    ref_losses, losses = _losses(reference[1]), _losses(out)
    assert losses == ref_losses


@pytest.mark.parametrize(
    "kill_at,last",
    [
        ("torch_save:model_0000007.pth", "model_0000003.pth"),  # half of the bytes in the temporary file
        ("replace:model_0000007.pth", "model_0000003.pth"),  # complete and synced, not yet renamed
        ("replace:last_checkpoint:2", "model_0000003.pth"),  # checkpoint renamed, last_checkpoint not updated
    ],
)
def test_kill_during_checkpoint_write_leaves_no_torn_file(reference, tmp_path, kill_at, last):
    cfg_file, out = _write_cfg(str(tmp_path), **DETERMINISTIC_RUN)
    _run(cfg_file, env=_env(ENGINE_TEST_KILL_AT=kill_at), expect_rc=-signal.SIGKILL)
    assert _check_no_torn_checkpoint(out) == last
    assert any(f.endswith(".tmp") for f in os.listdir(out))  # the killed write's temporary file
    if kill_at.startswith("torch_save"):  # the other kill points leave the same files to resume from
        _run(cfg_file, "--resume")
        assert not any(f.endswith(".tmp") for f in os.listdir(out))
        _assert_identical_runs(reference[1], out)


def test_eval_only_loads_weights_and_evaluates(reference, tmp_path):
    weights = os.path.join(reference[1], "model_final.safetensors")
    cfg_file, out = _write_cfg(str(tmp_path), MODEL__WEIGHTS=weights, DATASETS__TEST=("toy_val",))
    p = _run(cfg_file, "--eval-only")
    assert f"Loading from {weights}" in p.stdout
    with open(os.path.join(out, "inference", "toy_val", "results.json")) as f:
        results = json.load(f)
    assert results["num_images"] == 4 and results["L1"] > 0
    assert "Evaluation results for toy_val" in p.stdout
    assert not any(f.startswith("model_") for f in os.listdir(out))
    # default_setup: the full config, the log file, the seed.
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    with open(os.path.join(out, "log.txt")) as f:
        assert "Seeded the RNGs of rank 0 with 3" in f.read()


# No dropout, so one process and two see the same computation on the same global batches; gradient clipping on
# (the toy's total gradient norm starts well above 1), so it is checked across processes too.
MULTIPROCESS_RUN = dict(
    MODEL__PIXELLLM__LANGUAGE__DROPOUT=0.0,
    SOLVER__MAX_ITER=8,
    SOLVER__CHECKPOINT_PERIOD=4,
    SOLVER__CLIP_GRADIENTS__ENABLED=True,
)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    cfg_file, out = _write_cfg(str(tmp_path_factory.mktemp("single")), **MULTIPROCESS_RUN)
    _run(cfg_file)
    return out


def _assert_close_runs(out_a, out_b):
    la, lb = _losses(out_a), _losses(out_b)
    assert la.keys() == lb.keys() == set(range(8))
    for i in la:
        assert la[i] == pytest.approx(lb[i], rel=1e-5, abs=1e-6), i
    wa, wb = _final_weights(out_a), _final_weights(out_b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_ddp_two_cpu_processes_reproduce_one_process(single_process, tmp_path):
    cfg_file, out = _write_cfg(str(tmp_path), **MULTIPROCESS_RUN)
    p = _run(cfg_file, "--num-gpus", "2")
    assert "World size: 2" in p.stdout
    _assert_close_runs(single_process, out)
    assert os.path.isfile(os.path.join(out, "log.txt.rank1"))


def test_fsdp_under_torchrun_reproduces_one_process_and_resumes(single_process, tmp_path):
    cfg_file, out = _write_cfg(
        str(tmp_path), SOLVER__FSDP=True, SOLVER__FSDP_SHARD_MODULES="_ToyBlock", **MULTIPROCESS_RUN
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    # Killed after iteration 5, resumed from the checkpoint of iteration 3 (FSDP saves and loads full states).
    _run(cfg_file, env=_env(ENGINE_TEST_KILL_AT_ITER="5"), launcher=torchrun, expect_rc=None)
    assert _check_no_torn_checkpoint(out) == "model_0000003.pth"
    p = _run(cfg_file, "--resume", launcher=torchrun)
    assert "FSDP: sharded 3 submodules" in p.stdout + p.stderr
    assert "Starting training from iteration 4" in p.stdout + p.stderr
    _assert_close_runs(single_process, out)
    # The checkpoint holds full (unsharded) weights and the optimizer state by parameter name, like a
    # single-process one: one process without FSDP continues it.
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert ckpt["model"]["location_head.weight"].shape == (2, 8)
    assert ckpt["optimizer"]["state"]["location_head.weight"]["exp_avg"].shape == (2, 8)
    p = _run(cfg_file, "--resume", "SOLVER.FSDP", "False", "SOLVER.MAX_ITER", "10")
    assert "Starting training from iteration 8" in p.stdout
    assert "RNG states of 2 processes, this run has 1" in p.stdout
    assert set(_losses(out)) == set(range(10))
