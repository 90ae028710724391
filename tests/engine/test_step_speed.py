"""The training-step speed-ups keep what they replace: the batched mask decoder gives SAM's per-image decoder's
masks, the fused optimizer the reference updates, the loader's worker pipe the same batches, the tokenizer cache the
same ids; and the profile benchmark reports every phase of the step."""
import importlib.util
import os
import pickle

import numpy as np
import pytest
import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer

from pixelllm_d2.data.build import _from_pipe, _to_pipe
from pixelllm_d2.engine import build_optimizer
from pixelllm_d2.engine.optimizer import optimizer_impl
from pixelllm_d2.modeling.mask.mask_head import SAMMaskHead
from pixelllm_d2.text import build_tokenizer

_ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _mask_head(seed: int = 0) -> SAMMaskHead:
    torch.manual_seed(seed)
    head = SAMMaskHead(visual_dim=24, text_dim=20, dim=32, freeze_decoder=False, adapter_depth=1, adapter_num_heads=4,
                       adapter_mlp_dim=64, image_size=64, max_text_len=6)
    with torch.no_grad():  # the adapter's gate starts closed: open it so the adapter's path is compared too
        head.adapter.alpha.normal_()
    return head


def test_batched_mask_decoder_equals_sams_decoder_per_image():
    head = _mask_head()
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(3, 32, 4, 4, generator=g)
    image_index = torch.tensor([2, 0, 2, 1, 0])  # unsorted, repeated, every image
    box_tokens = torch.randn(5, 2, 32, generator=g)
    visual, text = torch.randn(5, 3, 24, generator=g), torch.randn(5, 6, 20, generator=g)
    text_mask = torch.rand(5, 6, generator=g) > 0.3
    pe, no_mask = torch.randn(1, 32, 4, 4, generator=g), torch.randn(32, generator=g)
    logits, iou = head(emb, image_index, box_tokens, visual, text, text_mask, pe, no_mask)
    assert logits.shape == (5, 16, 16) and iou.shape == (5,)
    tokens = head.adapter(box_tokens, visual, text, text_mask)
    for k, b in enumerate(image_index.tolist()):  # SAM's own decoder, one image and one prompt per call
        ref_masks, ref_iou = head.decoder(emb[b : b + 1], pe, tokens[k : k + 1], no_mask.view(1, 32, 1, 1).expand(1, 32, 4, 4),
                                          multimask_output=False)
        torch.testing.assert_close(logits[k], ref_masks[0, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(iou[k], ref_iou[0, 0], rtol=1e-5, atol=1e-5)
    assert isinstance(head.decoder, MaskDecoder) and isinstance(head.decoder.transformer, TwoWayTransformer)


def test_batched_mask_decoder_gradients_reach_the_used_parameters_only():
    head = _mask_head()
    g = torch.Generator().manual_seed(2)
    logits, iou = head(torch.randn(2, 32, 4, 4, generator=g), torch.tensor([0, 1, 1]), torch.randn(3, 2, 32, generator=g),
                       torch.randn(3, 3, 24, generator=g), torch.randn(3, 6, 20, generator=g), torch.ones(3, 6, dtype=torch.bool),
                       torch.randn(1, 32, 4, 4, generator=g), torch.randn(32, generator=g))
    (logits.square().mean() + iou.sum()).backward()
    d = head.decoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.output_hypernetworks_mlps[0].parameters())
    # single-mask output reads mask token 0 only: the other hypernetworks are not computed
    assert all(p.grad is None for m in d.output_hypernetworks_mlps[1:] for p in m.parameters())


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_optimizer_impls_match_the_for_loop_reference(impl):
    from tests.modeling.tiny import make_batch, tiny_cfg, tiny_model

    states = {}
    for name in ("for-loop", impl):
        model = tiny_model()
        cfg = tiny_cfg("SOLVER.OPTIMIZER_IMPL", name, "SOLVER.WEIGHT_DECAY", 0.05)
        opt = build_optimizer(cfg, model)
        assert bool(opt.defaults.get("fused")) == (name == "fused") and bool(opt.defaults.get("foreach")) == (name == "foreach")
        torch.manual_seed(3)
        for _ in range(3):
            opt.zero_grad()
            sum(model(make_batch()).values()).backward()
            opt.step()
        states[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in states["for-loop"].items():
        torch.testing.assert_close(states[impl][k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_optimizer_impl_errors():
    assert optimizer_impl("fused") == {"fused": True}
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER_IMPL must be one of"):
        optimizer_impl("apex")


def test_worker_pipe_round_trip_keeps_values_dtypes_and_structure():
    batch = [
        {"image": torch.arange(2 * 3 * 4, dtype=torch.uint8).view(2, 3, 4).transpose(1, 2),  # not contiguous
         "boxes": torch.tensor([[0.5, 1.0, 2.0, 3.0]]), "ids": torch.tensor([[1, 2, 0]]), "mask": torch.tensor([True, False]),
         "nested": [(torch.zeros(0, 4), "text"), {"n": 3}], "bf16": torch.ones(2, dtype=torch.bfloat16), "task": "refer"},
    ]
    piped = pickle.loads(pickle.dumps(_to_pipe(batch)))
    assert not any(isinstance(v, torch.Tensor) for k, v in piped[0].items() if k != "bf16")  # crossed as numpy
    back = _from_pipe(piped)
    assert back[0].keys() == batch[0].keys() and back[0]["task"] == "refer" and back[0]["nested"][1] == {"n": 3}
    for k in ("image", "boxes", "ids", "mask", "bf16"):
        assert back[0][k].dtype == batch[0][k].dtype and torch.equal(back[0][k], batch[0][k]), k
    assert isinstance(back[0]["nested"][0], tuple) and back[0]["nested"][0][0].shape == (0, 4)
    back[0]["image"][0, 0, 0] = 7  # a writable tensor of its own
    assert batch[0]["image"][0, 0, 0] == 0


def test_tokenizer_cache_gives_the_same_ids_and_survives_pickling():
    tok = build_tokenizer("shapes")
    text = "a large red circle"
    uncached = list(tok.hf(text, add_special_tokens=False).input_ids)
    assert tok.encode(text) == uncached + [tok.eos_id]
    assert tok.encode(text, max_len=3) == uncached[:2] + [tok.eos_id]
    assert tok.encode(text, add_eos=False) == uncached
    assert tok._ids.cache_info().hits >= 2
    clone = pickle.loads(pickle.dumps(tok))  # loader workers receive the tokenizer pickled
    assert clone.encode(text) == tok.encode(text) and clone._ids.cache_info().currsize == 1


@pytest.fixture
def small_shapes(tmp_path):
    from pixelllm_d2.data import register_all_shapes

    register_all_shapes(str(tmp_path), 16, 4)
    yield
    register_all_shapes()


def test_profile_benchmark_reports_phases_operators_and_frames(small_shapes, capsys):
    spec = importlib.util.spec_from_file_location("benchmark", os.path.join(_ROOT, "tools", "benchmark.py"))
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    cfg = os.path.join(_ROOT, "configs", "shapes", "pixelllm_tiny_shapes.yaml")
    argv = ["--config-file", cfg, "--task", "profile", "--iters", "3", "--warmup", "1", "--top", "5",
            "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
    (row,) = benchmark.run(benchmark.argument_parser().parse_args(argv))
    tasks = row["tasks"].values()
    assert sum(t["steps"] for t in tasks) == 3 and sum(t["profiled_steps"] for t in tasks) == 3
    for t in tasks:
        ms = t["ms"]
        if t["steps"]:
            assert ms["forward"] > 0 and ms["backward"] > 0 and ms["optimizer"] > 0
            assert ms["total"] == pytest.approx(ms["forward"] + ms["backward"] + ms["optimizer"] + ms["other"])
        assert len(t["ops"]) == (5 if t["profiled_steps"] else 0) and all(calls > 0 for _, _, calls in t["ops"])
    counted = [t for t in tasks if "gflop" in t]
    assert counted and all(t["gflop"] > 0 for t in counted)
    assert all(t["gflop_per_s"] == pytest.approx(t["gflop"] / (t["ms"]["total"] / 1e3)) for t in counted if "gflop_per_s" in t)
    frames = [f for t in row["tasks"].values() for f, _ in t.get("frames_project", [])]
    assert any("meta_arch/pixelllm.py" in f and "forward" in f for f in frames)
    out = capsys.readouterr().out
    assert "top operators" in out and "pixelllm_d2 frames by cumulative time" in out
    assert np.isfinite([t["ms"]["total"] for t in tasks if t["steps"]]).all()
