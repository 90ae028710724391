import json
import os

import pytest
import torch
from engine_toy import ToyLoader, ToyTrainer, run_toy, toy_cfg

from pixelllm_d2.engine import DefaultTrainer, NonFiniteLossError, default_argument_parser


def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    class NanTrainer(ToyTrainer):
        nan_at = 6

    out = str(tmp_path)
    cfg = toy_cfg(out, SOLVER__CHECKPOINT_PERIOD=4)
    with pytest.raises(NonFiniteLossError, match=r"iteration=6: rank 0: loss_l1=nan, loss_mse=nan") as e:
        run_toy(cfg, NanTrainer)
    assert "no checkpoint of this state is written" in str(e.value)
    assert sorted(f for f in os.listdir(out) if f.startswith("model_")) == ["model_0000003.pth"]
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read() == "model_0000003.pth"
    ckpt = torch.load(os.path.join(out, "model_0000003.pth"), weights_only=True)
    assert ckpt["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert [m["iteration"] for m in _metrics(out)] == list(range(6))


def test_default_writers_metrics_json_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class DefaultWriters(ToyTrainer):
        build_writers = DefaultTrainer.build_writers

    out = str(tmp_path)
    run_toy(toy_cfg(out, SOLVER__MAX_ITER=5, SOLVER__LOG_PERIOD=2), DefaultWriters)
    lines = _metrics(out)
    # One line per write: every LOG_PERIOD iterations and after the last.
    assert [m["iteration"] for m in lines] == [1, 3, 4]
    for m in lines:
        assert {"total_loss", "loss_l1", "loss_mse", "lr", "time", "data_time", "data/num_skipped"} <= set(m)
        assert m["total_loss"] == pytest.approx(m["loss_l1"] + m["loss_mse"], rel=0.5)  # medians of each
    assert lines[-1]["data/count/refer"] == 8 and lines[-1]["data/count/caption"] == 12
    events = [f for f in os.listdir(out) if f.startswith("events.out.tfevents")]
    assert len(events) == 1
    acc = EventAccumulator(os.path.join(out, events[0]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("total_loss")] == [1, 3, 4]
    assert [e.value for e in acc.Scalars("lr")] == pytest.approx([m["lr"] for m in lines])


def test_metrics_are_per_iteration_losses_and_counts(tmp_path):
    out = str(tmp_path)
    trainer, _ = run_toy(toy_cfg(out, SOLVER__MAX_ITER=4, MODEL__PIXELLLM__LANGUAGE__DROPOUT=0.0))
    lines = _metrics(out)
    for m in lines:
        assert m["total_loss"] == pytest.approx(m["loss_l1"] + m["loss_mse"])
    # Every 5th image id is flagged corrupt by the toy loader: ids 0, 5, 10, 15 in batches 0..3.
    assert [m["data/num_skipped"] for m in lines] == [1, 2, 3, 4]
    assert [m["lr"] for m in lines] == pytest.approx([0.0, 0.02 / 3, 0.04 / 3, 0.02])  # warmup of 3 iterations


def test_evaluation_periodic_and_final_without_perturbing_training(tmp_path):
    cfg_eval = toy_cfg(str(tmp_path / "eval"), SOLVER__MAX_ITER=5, TEST__EVAL_PERIOD=2, DATASETS__TEST=("toy_val",))
    trainer, results = run_toy(cfg_eval)
    assert set(results) == {"L1", "num_images"} and results["num_images"] == 4
    with open(tmp_path / "eval" / "inference" / "toy_val" / "results.json") as f:
        assert json.load(f) == results
    evals = [m for m in _metrics(cfg_eval.OUTPUT_DIR) if "L1" in m]
    assert [m["iteration"] for m in evals] == [1, 3, 5]  # after iterations 1 and 3, and the final (max_iter)
    assert evals[-1]["L1"] == pytest.approx(results["L1"])
    assert trainer.model.training

    plain, _ = run_toy(toy_cfg(str(tmp_path / "plain"), SOLVER__MAX_ITER=5))
    for (n, a), b in zip(trainer.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.equal(a, b), n


# fp16's GradScaler skips the first optimizer step (inf gradients at the initial scale): torch then warns that
# the scheduler stepped first.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_on_cpu(tmp_path, dtype):
    out = str(tmp_path)
    trainer, _ = run_toy(toy_cfg(out, SOLVER__MAX_ITER=4, SOLVER__AMP__ENABLED=True, SOLVER__AMP__DTYPE=dtype))
    assert trainer._trainer.precision == getattr(torch, dtype)
    assert (trainer._trainer.grad_scaler is not None) == (dtype == "float16")
    lines = _metrics(out)
    assert all(torch.isfinite(torch.tensor(m["total_loss"])) for m in lines)
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert ("grad_scaler" in ckpt["trainer"]["_trainer"]) == (dtype == "float16")


def test_loader_contract_of_the_toy_loader():
    # The engine's resume relies on it: batch k depends on (seed, k) only.
    a = iter(ToyLoader(4, seed=5, start_iter=0))
    for _ in range(3):
        next(a)
    b = next(iter(ToyLoader(4, seed=5, start_iter=3)))
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(next(a), b))


def test_default_argument_parser():
    args = default_argument_parser().parse_args(
        "--config-file c.yaml --resume --eval-only --num-gpus 2 --num-machines 3 --machine-rank 1 "
        "--dist-url tcp://h:1 SOLVER.MAX_ITER 5 MODEL.WEIGHTS w.pth".split()
    )
    assert (args.config_file, args.resume, args.eval_only) == ("c.yaml", True, True)
    assert (args.num_gpus, args.num_machines, args.machine_rank, args.dist_url) == (2, 3, 1, "tcp://h:1")
    assert args.opts == ["SOLVER.MAX_ITER", "5", "MODEL.WEIGHTS", "w.pth"]
    defaults = default_argument_parser().parse_args([])
    assert (defaults.num_gpus, defaults.dist_url, defaults.resume, defaults.opts) == (1, "auto", False, [])


def test_finite_loader_is_a_clear_error(tmp_path):
    class ShortLoader(ToyTrainer):
        @classmethod
        def build_train_loader(cls, cfg, start_iter=0, seed=None):
            return [ToyLoader(4, seed).global_batch(k) for k in range(2)]

    with pytest.raises(RuntimeError, match="ran out of batches at iteration 2"):
        run_toy(toy_cfg(str(tmp_path), SOLVER__MAX_ITER=5), ShortLoader)


def test_checkpoint_period_zero_saves_only_the_final_checkpoint(tmp_path):
    run_toy(toy_cfg(str(tmp_path), SOLVER__MAX_ITER=3, SOLVER__CHECKPOINT_PERIOD=0))
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("model_")) == [
        "model_final.pth",
        "model_final.safetensors",
    ]


def test_sharded_training_refuses_different_tasks_across_processes(monkeypatch):
    from pixelllm_d2.engine import SimpleTrainer
    from pixelllm_d2.engine.train_loop import comm

    model = torch.nn.Linear(2, 2)
    batch = [{"task": "refer"}]
    trainer = SimpleTrainer(model, [batch], torch.optim.AdamW(model.parameters()), same_tasks_across_processes=True)
    # What rank 0 would see in a 2-process run where rank 1's batch is a caption batch.
    monkeypatch.setattr(comm, "all_gather", lambda obj: [obj, ["caption"]])
    trainer.before_train()
    with pytest.raises(RuntimeError, match=r"different tasks \(\[\['refer'\], \['caption'\]\], by rank\)"):
        trainer.run_step()


def test_loss_reduction_over_processes(monkeypatch):
    from pixelllm_d2.engine import SimpleTrainer
    from pixelllm_d2.engine.train_loop import comm
    from pixelllm_d2.utils.events import EventStorage

    class TwoLosses(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, batch):
            return {"loss_a": self.w * 1.0, "loss_b": self.w * 3.0}

    model = TwoLosses()
    batch = [{"task": "refer"}]
    trainer = SimpleTrainer(model, [batch], torch.optim.AdamW(model.parameters()))
    other = {"losses": {"loss_a": 2.0}, "data_time": 0.5, "tasks": {"caption": 3}, "num_skipped": 4}
    monkeypatch.setattr(comm, "all_gather", lambda obj: [obj, other])  # a second process without loss_b
    trainer.before_train()
    with EventStorage() as storage:
        trainer.run_step()
    latest = {k: v for k, (v, _) in storage.latest().items()}
    # each loss: its share of the objective (0 on the process without it); together they make total_loss
    assert latest["loss_a"] == pytest.approx(1.5) and latest["loss_b"] == pytest.approx(1.5)
    assert latest["total_loss"] == pytest.approx((4.0 + 2.0) / 2) == latest["loss_a"] + latest["loss_b"]
    assert latest["data_time"] == 0.5 and latest["data/num_skipped"] == 4
    assert latest["data/count/refer"] == 1 and latest["data/count/caption"] == 3


def test_bad_amp_dtype(tmp_path):
    with pytest.raises(ValueError, match="'fp16'"):
        ToyTrainer(toy_cfg(str(tmp_path), SOLVER__AMP__ENABLED=True, SOLVER__AMP__DTYPE="fp16"))
