import logging
import os
import stat

import pytest
import torch
from engine_toy import EngineToyNet, run_toy, toy_cfg
from safetensors import safe_open

from pixelllm_d2.engine import Checkpointer
from pixelllm_d2.engine.checkpoint import load_safetensors, save_safetensors
from pixelllm_d2.utils.file_io import atomic_write


def test_atomic_write_replaces_or_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    with atomic_write(str(path), "w") as f:
        f.write("old")
    assert path.read_text() == "old"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(str(path), "w") as f:
            f.write("new, half written")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]  # the temporary file is gone


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy run of 6 iterations with checkpoints after iterations 2 and 5 (= final)."""
    out = str(tmp_path_factory.mktemp("trained"))
    cfg = toy_cfg(out, SOLVER__MAX_ITER=6, SOLVER__CHECKPOINT_PERIOD=3)
    trainer, _ = run_toy(cfg)
    return cfg, trainer


def test_checkpoint_files_and_contents(trained):
    cfg, _ = trained
    out = cfg.OUTPUT_DIR
    files = sorted(f for f in os.listdir(out) if f.startswith("model_"))
    assert files == ["model_0000002.pth", "model_0000005.pth", "model_final.pth", "model_final.safetensors"]
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read() == "model_final.pth"
    ckpt = torch.load(os.path.join(out, "model_0000002.pth"), weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "scheduler", "trainer", "iteration"}
    assert ckpt["iteration"] == 2 and ckpt["trainer"]["iteration"] == 2
    assert ckpt["scheduler"] == {"base_lrs": [0.02, 0.02], "last_epoch": 3}
    t = ckpt["trainer"]
    assert t["data"] == {"seed": cfg.SEED, "start_iter": 3}
    assert len(t["rng_states"]) == 1 and set(t["rng_states"][0]) == {"python", "numpy", "torch", "cuda"}
    # Toy batches of 4: iterations 0 ("refer"), 1 and 2 ("caption"); every 5th image counts as corrupt.
    assert t["_trainer"]["task_counts"] == {"refer": 4, "caption": 8}
    assert t["_trainer"]["num_skipped"] == 3
    assert len(ckpt["optimizer"]["state"]) == sum(1 for p in EngineToyNet(cfg).parameters() if p.requires_grad)


def test_resume_restores_every_state(trained):
    cfg, first = trained
    ckpt = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=True)
    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    from engine_toy import ToyTrainer

    second = ToyTrainer(cfg)
    second.resume_or_load(resume=True)
    assert second.start_iter == 6
    for (n, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), n
    s1, s2 = first.optimizer.state_dict(), second.optimizer.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1["state"][k][name], s2["state"][k][name])
    assert second.scheduler.state_dict() == first.scheduler.state_dict()
    assert second.data_seed == first.data_seed
    assert second._trainer.task_counts == first._trainer.task_counts
    assert second._trainer.num_skipped == first._trainer.num_skipped == 5
    pending = second._pending_rng_state
    saved = ckpt["trainer"]["rng_states"][0]
    assert torch.equal(pending["torch"], saved["torch"]) and pending["python"] == saved["python"]


def _state(seed=0):
    torch.manual_seed(seed)
    return EngineToyNet(toy_cfg("unused")).state_dict()


@pytest.mark.parametrize("fmt", ["safetensors", "pth_state_dict", "pth_checkpoint"])
def test_load_weights_names_missing_and_unexpected_keys(tmp_path, caplog, fmt):
    sd = _state(seed=1)
    del sd["location_head.bias"]
    sd["extra_head.weight"] = torch.ones(2)
    path = str(tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth"))
    if fmt == "safetensors":
        save_safetensors(sd, path)
    else:
        torch.save(sd if fmt == "pth_state_dict" else {"model": sd, "iteration": 7}, path)

    torch.manual_seed(2)
    model = EngineToyNet(toy_cfg(str(tmp_path)))
    before = model.location_head.bias.clone()
    with caplog.at_level(logging.WARNING, logger="pixelllm_d2"):
        Checkpointer(model, str(tmp_path)).resume_or_load(path, resume=False)
    for k, v in model.state_dict().items():
        if k != "location_head.bias":
            assert torch.equal(v, sd[k]), k
    assert torch.equal(model.location_head.bias, before)  # missing: kept as initialised
    text = caplog.text
    assert path in text and "location_head.bias" in text and "extra_head.weight" in text


def test_load_reports_shape_mismatch(tmp_path, caplog):
    sd = _state()
    sd["location_head.weight"] = torch.zeros(3, 8)
    path = str(tmp_path / "w.pth")
    torch.save(sd, path)
    with caplog.at_level(logging.WARNING, logger="pixelllm_d2"):
        Checkpointer(EngineToyNet(toy_cfg(str(tmp_path)))).load(path)
    assert "'location_head.weight' not loaded: shape (3, 8) in the checkpoint, (2, 8) in the model" in caplog.text


class _Payload:
    pass


def test_unsafe_pickles_are_refused(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"model": _state(), "extra": _Payload()}, path)
    with pytest.raises(ValueError, match="evil.pth: not loadable with torch.load\\(weights_only=True\\)"):
        Checkpointer(EngineToyNet(toy_cfg(str(tmp_path)))).load(path)


def test_non_state_dict_file_is_refused(tmp_path):
    path = str(tmp_path / "list.pth")
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(ValueError, match="list.pth: neither a checkpoint"):
        Checkpointer(EngineToyNet(toy_cfg(str(tmp_path)))).load(path)


def test_safetensors_stores_tied_tensors_once(tmp_path):
    emb = torch.randn(5, 3)
    sd = {"shared.weight": emb, "lm_head.weight": emb, "row": emb[1], "other": torch.arange(4.0)}
    path = str(tmp_path / "tied.safetensors")
    save_safetensors(sd, path)
    with safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == ["other", "row", "shared.weight"]
    loaded = load_safetensors(path)
    assert sorted(loaded) == sorted(sd)
    for k in sd:
        assert torch.equal(loaded[k], sd[k])


def test_resume_removes_temporary_files_of_killed_writes(tmp_path):
    stale = tmp_path / ".model_0000003.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    (tmp_path / "keep.txt").write_text("x")
    Checkpointer(EngineToyNet(toy_cfg(str(tmp_path))), str(tmp_path)).resume_or_load("", resume=True)
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_named_optimizer_state_round_trip_and_mismatch(tmp_path):
    from pixelllm_d2.engine import build_optimizer
    from pixelllm_d2.engine.checkpoint import NamedOptimizerState

    cfg = toy_cfg(str(tmp_path))
    model = EngineToyNet(cfg)
    opt = build_optimizer(cfg, model)
    model([{"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "target": torch.ones(2)}])["loss_l1"].backward()
    opt.step()
    state = NamedOptimizerState(model, opt).state_dict()
    assert "backbone.eva02.pos_embed" in state["state"] and "backbone.sam.weight" not in state["state"]
    assert state["param_groups"][0]["params"][:2] == ["backbone.eva02.pos_embed", "backbone.eva02.cls_token"]

    opt2 = build_optimizer(cfg, model)
    NamedOptimizerState(model, opt2).load_state_dict(state)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])

    cfg.SOLVER.LR_MULTIPLIERS = [["location_head", 2.0]]
    with pytest.raises(ValueError, match="other parameter groups"):
        NamedOptimizerState(model, build_optimizer(cfg, model)).load_state_dict(state)
