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


def _prefixed(sd):
    return {f"detector.{k}": v for k, v in sd.items()}


def _one_bad(sd, key, value):
    return {**sd, key: value}


# Each case: how the state dict is spoiled, and the message's key phrase. The toy model's location_head.weight is
# (2, 8); its backbone holds most of the elements.
REFUSED = {
    "every key under another prefix": (_prefixed, r'supplies only 0\.0% of the model\'s weights.*extra prefix "detector\."'),
    "a shape mismatch": (lambda sd: _one_bad(sd, "location_head.weight", torch.zeros(3, 8)),
                         r"location_head\.weight \(3, 8\) \(model: \(2, 8\)\)"),
    "a NaN": (lambda sd: _one_bad(sd, "location_head.weight", torch.full((2, 8), float("nan"))),
              r"NaN or Inf values in 1 tensor\(s\): location_head\.weight"),
    "an Inf": (lambda sd: _one_bad(sd, "backbone.eva02.pos_embed", torch.full((8,), float("inf"))), "NaN or Inf"),
    "most of the model missing": (lambda sd: {k: v for k, v in sd.items() if not k.startswith("backbone.")},
                                  r"supplies only .*% of the model's weights.*Missing: backbone\.eva02"),
}


def _load_with_checkpointer(model, path):
    Checkpointer(model).load(path)


def _load_with_predictor_rule(model, path):
    from pixelllm_d2.modeling.weights import load_into, load_state_dict_file

    load_into(model, load_state_dict_file(path), f"MODEL.WEIGHTS ({path})")


@pytest.mark.parametrize("loader", [_load_with_checkpointer, _load_with_predictor_rule], ids=["checkpointer", "load_into"])
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_mismatched_weights_are_refused_by_one_rule(tmp_path, loader, case):
    spoil, message = REFUSED[case]
    path = str(tmp_path / "w.pth")
    torch.save(spoil(_state(seed=1)), path)
    torch.manual_seed(2)
    model = EngineToyNet(toy_cfg(str(tmp_path)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message) as info:
        loader(model, path)
    assert path in str(info.value)
    for k, v in model.state_dict().items():  # refused before anything was loaded
        assert torch.equal(v, before[k]), k


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pth"):
        Checkpointer(EngineToyNet(toy_cfg(str(tmp_path)))).load(str(tmp_path / "nope.pth"))


def test_ddp_prefixed_checkpoint_still_loads(tmp_path):
    sd = _state(seed=1)
    path = str(tmp_path / "w.pth")
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    model = EngineToyNet(toy_cfg(str(tmp_path)))
    Checkpointer(model).load(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


class _Payload:
    pass


def test_unsafe_pickles_are_refused(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"model": _state(), "extra": _Payload()}, path)
    with pytest.raises(ValueError, match="evil.pth: holds pickled Python objects besides tensors, which are never unpickled"):
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
