"""tools/train_net.py with the REAL trainer, loader and model (the shapes config on a small generated benchmark),
in subprocesses: a SIGKILL at a random moment and `--resume` give bit-identical weights, optimizer state and
logged losses with 1 and 2 processes; a resume from the last checkpoint writes the final weights; a torn
metrics.json line is tolerated; 2-process training follows its documented contract (docs/TRAINING.md)."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from pixelllm_d2.config import get_cfg
from pixelllm_d2.data.datasets.shapes import ensure_shapes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(HERE, "engine_toy_train.py")
NUM_TRAIN, NUM_VAL = 32, 4
MAX_ITER, PERIOD = 12, 4  # checkpoints after iterations 3, 7 and 11 (= final)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    ensure_shapes(root, NUM_TRAIN, NUM_VAL)
    return root


def _env(data_root, **extra):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
        ENGINE_TEST_TRAINER="real", PIXELLLM_DATASETS=data_root, PIXELLLM_SHAPES_NUM_TRAIN=str(NUM_TRAIN),
        PIXELLLM_SHAPES_NUM_VAL=str(NUM_VAL),
    )
    env.pop("ENGINE_TEST_KILL_AT_ITER", None)
    env.update(extra)
    return env


def _write_cfg(folder, **overrides):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "shapes", "pixelllm_tiny_shapes.yaml"))
    cfg.merge_from_list([
        "SOLVER.MAX_ITER", MAX_ITER, "SOLVER.CHECKPOINT_PERIOD", PERIOD, "SOLVER.WARMUP_ITERS", 2,
        "SOLVER.IMS_PER_BATCH", 4, "SOLVER.LOG_PERIOD", 1, "DETERMINISTIC", True, "DATASETS.TEST", (),
        "OUTPUT_DIR", os.path.join(folder, "out"),
    ])
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "cfg.yaml")
    with open(path, "w") as f:
        f.write(cfg.dump())
    return path, cfg.OUTPUT_DIR


def _cmd(cfg_file, *args, procs=1):
    return [sys.executable, SCRIPT, "--config-file", cfg_file, "--num-gpus", str(procs), *args]


def _run(cmd, env, expect_rc=0):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if expect_rc is not None and p.returncode != expect_rc:
        raise AssertionError(f"rc={p.returncode}, expected {expect_rc}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _flat(obj, prefix=""):
    if isinstance(obj, dict):
        return {k2: v2 for k, v in obj.items() for k2, v2 in _flat(v, f"{prefix}/{k}").items()}
    if isinstance(obj, (list, tuple)):
        return {k2: v2 for i, v in enumerate(obj) for k2, v2 in _flat(v, f"{prefix}/{i}").items()}
    return {prefix: obj} if isinstance(obj, torch.Tensor) else {}


def _differing_tensors(out_a, out_b):
    """Names of the model and optimizer tensors of model_final.pth that differ between two runs."""
    a = torch.load(os.path.join(out_a, "model_final.pth"), weights_only=True)
    b = torch.load(os.path.join(out_b, "model_final.pth"), weights_only=True)
    fa, fb = (_flat({"model": c["model"], "optimizer": c["optimizer"]}) for c in (a, b))
    assert fa.keys() == fb.keys() and len(fa) > 1000
    assert a["iteration"] == b["iteration"] == MAX_ITER - 1
    assert a["trainer"]["data"] == b["trainer"]["data"] and a["trainer"]["iteration"] == b["trainer"]["iteration"]
    return [k for k in fa if not torch.equal(fa[k], fb[k])]


_TIMING = ("time", "data_time", "eta_seconds")


def _metrics(out):
    """{iteration: logged scalars} without wall-clock timings; one line per iteration, in order."""
    with open(os.path.join(out, "metrics.json")) as f:
        lines = [json.loads(line) for line in f]
    iters = [m["iteration"] for m in lines]
    assert iters == sorted(set(iters)), "one line per iteration, in order (also after a resume)"
    return {m["iteration"]: {k: v for k, v in m.items() if k not in _TIMING} for m in lines}


@pytest.fixture(scope="module")
def reference_runs(data_root, tmp_path_factory):
    """procs -> OUTPUT_DIR of an uninterrupted run with that many processes (made on first use)."""
    runs = {}

    def get(procs: int) -> str:
        if procs not in runs:
            cfg_file, out = _write_cfg(str(tmp_path_factory.mktemp(f"reference{procs}")))
            _run(_cmd(cfg_file, procs=procs), _env(data_root))
            runs[procs] = out
        return runs[procs]

    return get


@pytest.mark.parametrize("procs", [1, 2])
def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(reference_runs, data_root, tmp_path, procs):
    ref_out = reference_runs(procs)
    cfg_file, out = _write_cfg(str(tmp_path))
    env = _env(data_root)
    p = subprocess.Popen(_cmd(cfg_file, procs=procs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    first = os.path.join(out, f"model_{PERIOD - 1:07d}.pth")
    deadline = time.time() + 300
    while not os.path.exists(first) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(procs).uniform(0.0, 1.5))  # somewhere in the iterations (or checkpoint writes) after it
    assert p.poll() is None, "the run ended before the kill; raise MAX_ITER"
    os.killpg(p.pid, signal.SIGKILL)  # the launcher and its worker processes
    p.wait()
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    resumed = _run(_cmd(cfg_file, "--resume", procs=procs), env)
    assert "Starting training from iteration" in resumed.stdout + resumed.stderr
    assert _differing_tensors(ref_out, out) == []
    assert _metrics(out) == _metrics(ref_out)  # the smoothing windows of the logged losses survive the resume


def _only_checkpoint(ref_out: str, out: str, iteration: int) -> None:
    """`out` holds the reference run's checkpoint of `iteration` alone, named by last_checkpoint."""
    os.makedirs(out)
    name = f"model_{iteration:07d}.pth"
    shutil.copy(os.path.join(ref_out, name), out)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write(name)


@pytest.mark.parametrize("procs", [1, 2])
def test_resume_from_the_last_checkpoint_writes_the_final_weights(reference_runs, data_root, tmp_path, procs):
    """A kill during the final save: only the checkpoint of the last iteration exists."""
    ref_out = reference_runs(procs)
    cfg_file, out = _write_cfg(str(tmp_path))
    _only_checkpoint(ref_out, out, MAX_ITER - 1)
    with open(os.path.join(ref_out, "metrics.json")) as f:
        lines = f.readlines()
    with open(os.path.join(out, "metrics.json"), "w") as f:
        f.writelines(lines)
        f.write(lines[-1][: len(lines[-1]) // 2])  # a line cut by the kill
    _run(_cmd(cfg_file, "--resume", procs=procs), _env(data_root))
    assert sorted(f for f in os.listdir(out) if f.startswith("model_final")) == [
        "model_final.pth", "model_final.safetensors"]
    assert _differing_tensors(ref_out, out) == []
    assert _metrics(out) == _metrics(ref_out)


def test_resume_from_a_middle_checkpoint_is_bit_identical(reference_runs, data_root, tmp_path):
    ref_out = reference_runs(1)
    cfg_file, out = _write_cfg(str(tmp_path))
    _only_checkpoint(ref_out, out, 2 * PERIOD - 1)
    p = _run(_cmd(cfg_file, "--resume"), _env(data_root))
    assert f"Starting training from iteration {2 * PERIOD}" in p.stdout + p.stderr
    assert _differing_tensors(ref_out, out) == []
    resumed = _metrics(out)
    assert min(resumed) == 2 * PERIOD  # metrics.json holds only what the resumed run logged
    assert resumed == {k: v for k, v in _metrics(ref_out).items() if k >= 2 * PERIOD}


def test_two_processes_follow_the_documented_contract(data_root, tmp_path, monkeypatch):
    """docs/TRAINING.md, "Several processes": each process computes the losses of its slice of the global batch
    (normalised within the slice, random choices from its own RNG seeded SEED + rank), and the step minimises the
    mean over processes. Emulated in this process on the same mixed-task batch: the logged losses and the weights
    after one step match."""
    from pixelllm_d2.data import build_train_loader
    from pixelllm_d2.engine import build_grad_clipper, build_lr_scheduler, build_optimizer
    from pixelllm_d2.engine.checkpoint import load_safetensors
    from pixelllm_d2.modeling import build_model
    from pixelllm_d2.utils.env import seed_all_rng

    mixed = {"DATALOADER.MIX_TASKS_IN_BATCH": True, "SOLVER.IMS_PER_BATCH": 8, "SOLVER.MAX_ITER": 1}
    cfg_file, out = _write_cfg(str(tmp_path), **mixed)
    _run(_cmd(cfg_file, procs=2), _env(data_root))
    (logged,) = _metrics(out).values()

    cfg = get_cfg()
    cfg.merge_from_file(cfg_file)
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 0
    monkeypatch.setenv("PIXELLLM_SHAPES_NUM_TRAIN", str(NUM_TRAIN))
    monkeypatch.setenv("PIXELLLM_SHAPES_NUM_VAL", str(NUM_VAL))
    from pixelllm_d2.data import register_all_shapes

    register_all_shapes(data_root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models, losses, tasks = [], [], set()
        for rank in (0, 1):
            seed_all_rng(cfg.SEED + rank)  # as default_setup, then the trainer builds the model
            model = build_model(cfg)
            if rank == 1:
                model.load_state_dict(models[0].state_dict())  # DDP starts every process from rank 0's weights
            batch = next(iter(build_train_loader(cfg, rank=rank, world_size=2)))
            tasks |= {d["task"] for d in batch}
            model.train()
            losses.append(model(batch))
            models.append(model)
        assert len(tasks) >= 3, f"the batch should mix tasks, got {tasks}"
        per_key = {}
        for ld in losses:
            for k, v in ld.items():
                per_key.setdefault(k, []).append(float(v.detach()))
        expected = {k: sum(v) / 2 for k, v in per_key.items()}  # absent on a process: 0
        expected["total_loss"] = sum(float(sum(ld.values()).detach()) for ld in losses) / 2
        for k, v in expected.items():
            assert logged[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k

        # One step on the mean objective: DDP's averaged gradients, then clipping and AdamW as the trainer.
        for model, ld in zip(models, losses):
            sum(ld.values()).backward()
        params = dict(models[0].named_parameters())
        for name, p in models[1].named_parameters():
            g0, g1 = params[name].grad, p.grad
            if g0 is None and g1 is None:
                continue
            g0 = torch.zeros_like(p) if g0 is None else g0
            g1 = torch.zeros_like(p) if g1 is None else g1
            params[name].grad = (g0 + g1) / 2
        optimizer = build_optimizer(cfg, models[0])
        build_lr_scheduler(cfg, optimizer)
        clip = build_grad_clipper(cfg)
        if clip is not None:
            clip([p for g in optimizer.param_groups for p in g["params"]])
        optimizer.step()
        trained = load_safetensors(os.path.join(out, "model_final.safetensors"))
        for k, v in models[0].state_dict().items():
            torch.testing.assert_close(trained[k], v, rtol=1e-5, atol=1e-6, msg=k)
    finally:
        torch.set_num_threads(threads)
        monkeypatch.undo()
        register_all_shapes()


def test_eval_only_refuses_a_checkpoint_that_does_not_fit(reference_runs, data_root, tmp_path):
    from pixelllm_d2.engine.checkpoint import load_safetensors, save_safetensors

    weights = load_safetensors(os.path.join(reference_runs(1), "model_final.safetensors"))
    path = str(tmp_path / "prefixed.safetensors")
    save_safetensors({f"detector.{k}": v for k, v in weights.items()}, path)
    cfg_file, _ = _write_cfg(str(tmp_path), **{"MODEL.WEIGHTS": path, "DATASETS.TEST": ("shapes_refcoco_val",)})
    p = _run(_cmd(cfg_file, "--eval-only"), _env(data_root), expect_rc=None)
    assert p.returncode != 0
    assert f'{path}: supplies only 0.0% of the model\'s weights, so it is not a checkpoint of this model (its keys ' \
           f'carry an extra prefix "detector.")' in p.stdout + p.stderr
    assert "Evaluation results" not in p.stdout + p.stderr


def test_bert_decoder_family_trains_and_evaluates(data_root, tmp_path):
    """The official BERT / GIT decoder (configs/bert/) through the real trainer, loader (WordPiece targets and trace
    alignment) and evaluators, on the shapes config."""
    lang = "MODEL.PIXELLLM.LANGUAGE."
    cfg_file, out = _write_cfg(str(tmp_path), **{
        lang + "NAME": "GITDecoderLM", lang + "TOKENIZER": "shapes-wordpiece", lang + "LORA.ENABLED": False,
        "SOLVER.MAX_ITER": 3, "SOLVER.CHECKPOINT_PERIOD": 100,
        "DATASETS.TEST": ("shapes_refcoco_val", "shapes_ln_val", "shapes_vg_val"),
    })
    p = _run(_cmd(cfg_file), _env(data_root))
    losses = [m for m in _metrics(out).values() if "loss_text" in m]
    assert len(losses) == 3 and all(0 < m["loss_text"] < 20 for m in losses)
    with open(os.path.join(out, "inference", "shapes_ln_val", "predictions.json")) as f:
        preds = json.load(f)
    # teacher-forced narratives: one located WordPiece token per target token, one narrative per image
    assert len({x["image_id"] for x in preds}) == NUM_VAL and all(len(x["token_boxes"]) > 3 for x in preds)
    for key in ("P@0.5", "point_l1", "mAP"):
        assert key in p.stdout + p.stderr


def test_fsdp_with_activation_checkpointing_matches_ddp(data_root, tmp_path):
    """The paper-scale memory options on the real model, trainer and loader: 2 CPU processes (gloo) sharded with
    FSDP at block level (SOLVER.FSDP_SHARD_MODULES: the SAM, EVA02, T5 and two-way-transformer blocks), with
    activation checkpointing of the EVA02 and T5 blocks, log the same losses and end with the same weights as
    2-process DDP without checkpointing."""
    runs = {}
    for name, opts in {
        "ddp": {},
        "fsdp": {"SOLVER.FSDP": True, "MODEL.PIXELLLM.EVA02.GRAD_CHECKPOINTING": True,
                 "MODEL.PIXELLLM.LANGUAGE.GRAD_CHECKPOINTING": True},
    }.items():
        cfg_file, out = _write_cfg(str(tmp_path / name), **{"SOLVER.MAX_ITER": 6, "SOLVER.CHECKPOINT_PERIOD": 100}, **opts)
        p = _run(_cmd(cfg_file, procs=2), _env(data_root))
        runs[name] = (out, p.stdout + p.stderr)
    log = runs["fsdp"][1]
    shared = [int(n) for n in re.findall(r"FSDP: sharded (\d+) submodules", log)]
    assert shared and shared[0] >= 6, log[-2000:]  # SAM, EVA02 and T5 blocks at least
    ddp, fsdp = _metrics(runs["ddp"][0]), _metrics(runs["fsdp"][0])
    assert sorted(ddp) == sorted(fsdp) == list(range(6))
    for it in ddp:
        losses = {k: v for k, v in ddp[it].items() if k.startswith("loss_") or k == "total_loss"}
        assert losses
        for k, v in losses.items():
            assert fsdp[it][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (it, k)
    final = [torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"] for out, _ in runs.values()]
    assert final[0].keys() == final[1].keys()
    # Attention key biases get gradients that are zero in exact arithmetic (softmax ignores a constant shift), so
    # their rounding noise differs with the reduction order and Adam turns it into steps of up to BASE_LR (1e-3 here).
    for k in final[0]:
        atol = 1e-3 if k.endswith(("k_proj.bias", "qkv.bias", "key.bias", "key_pos.bias")) else 5e-5
        torch.testing.assert_close(final[1][k], final[0][k], rtol=1e-4, atol=atol, msg=k)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_checkpoints_the_current_iteration_and_resume_continues(reference_runs, data_root, tmp_path, signum):
    """SIGTERM (a SLURM / Kubernetes preemption) or SIGINT (Ctrl-C) mid-run: the current iteration is saved, the
    resume command printed, the exit status is 128 + the signal; `--resume` then ends with the weights and logged
    losses of an uninterrupted run."""
    ref_out = reference_runs(1)
    cfg_file, out = _write_cfg(str(tmp_path))
    p = subprocess.Popen(_cmd(cfg_file), env=_env(data_root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.json")
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 2:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before the signal; raise MAX_ITER"
    p.send_signal(signum)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 128 + signum, stderr[-3000:]
    line = next(x for x in stderr.splitlines() if x.startswith("Interrupted by"))
    it = int(line.split("after iteration ")[1].split(":")[0])
    assert 1 <= it < MAX_ITER - 1 and "Traceback" not in stderr
    assert f"model_{it:07d}.pth" in line and "--resume" in line
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == f"model_{it:07d}.pth"
    resumed = _run(_cmd(cfg_file, "--resume"), _env(data_root))
    assert f"Starting training from iteration {it + 1}" in resumed.stdout + resumed.stderr
    assert _differing_tensors(ref_out, out) == []
    assert _metrics(out) == _metrics(ref_out)


def test_an_existing_run_is_not_overwritten_and_a_finished_one_says_so(reference_runs, data_root, tmp_path):
    ref_out = reference_runs(1)
    cfg_file, out = _write_cfg(str(tmp_path))
    shutil.copytree(ref_out, out)
    before = os.path.getmtime(os.path.join(out, "model_final.pth"))
    p = _run(_cmd(cfg_file), _env(data_root), expect_rc=2)
    assert "already holds a run (last checkpoint model_final.pth): continue it with --resume" in p.stderr
    p = _run(_cmd(cfg_file, "--resume"), _env(data_root))
    assert "holds a finished run (12 of SOLVER.MAX_ITER 12 iterations): nothing to train" in p.stdout + p.stderr
    assert os.path.getmtime(os.path.join(out, "model_final.pth")) == before


def test_preflight_finds_a_missing_java_before_training(data_root, tmp_path):
    cfg_file, out = _write_cfg(str(tmp_path), **{"DATASETS.TEST": ("shapes_vg_loca_val",)})
    python_only = os.path.dirname(sys.executable)  # a PATH without java
    p = _run(_cmd(cfg_file), _env(data_root, PATH=python_only), expect_rc=2)
    assert "shapes_vg_loca_val needs Java" in p.stderr and "TEST.SKIP_METEOR True" in p.stderr
    assert "Starting training" not in p.stdout + p.stderr
    # dense captioning needs Java only for METEOR: without it the run goes through, mAP left out
    cfg_file, out = _write_cfg(str(tmp_path / "skip"), **{"DATASETS.TEST": ("shapes_vg_val",), "TEST.SKIP_METEOR": True,
                                                          "SOLVER.MAX_ITER": 1})
    _run(_cmd(cfg_file), _env(data_root, PATH=python_only))
    cfg_file, out = _write_cfg(str(tmp_path / "meteor"), **{"DATASETS.TEST": ("shapes_vg_val",)})
    p = _run(_cmd(cfg_file), _env(data_root, PATH=python_only), expect_rc=2)
    assert "shapes_vg_val needs Java" in p.stderr
