"""What a new user meets on bad input: one line naming the problem, exit status 2, no traceback (unless --debug),
never torch's advice to unpickle with weights_only=False; and weights files that are not what they claim."""
import os
import subprocess
import sys

import pytest
import torch

from pixelllm_d2.modeling.weights import load_state_dict_file

from ..conftest import REPO_ROOT

TINY = os.path.join(REPO_ROOT, "configs", "tiny", "pixelllm_tiny.yaml")
SCENE = os.path.join(REPO_ROOT, "docs", "demo", "inputs", "shapes_scene.png")


def _tool(name, *args, env=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO_ROOT, **(env or {}))
    env.pop("PIXELLLM_DEBUG", None)
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", name), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO_ROOT)


class _Payload:
    """An arbitrary object in a checkpoint: what `weights_only=True` refuses to unpickle."""


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    files = {"garbage.pth": b"this is not a checkpoint\n" * 40, "bad.safetensors": b"\x00\x01 not safetensors",
             "random.pth": bytes(torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(0)).to(torch.uint8).tolist())}
    for name, data in files.items():
        (d / name).write_bytes(data)
    torch.save({"model": {"w": torch.ones(3)}}, d / "full.pth")
    (d / "truncated.pth").write_bytes((d / "full.pth").read_bytes()[:200])
    torch.save({"model": {"w": torch.ones(3)}, "extra": _Payload()}, d / "object.pth")  # not weights-only
    return d


@pytest.mark.parametrize("name,message", [
    ("garbage.pth", "not a readable torch checkpoint (truncated or not a torch file)"),
    ("truncated.pth", "not a readable torch checkpoint (truncated or not a torch file)"),
    ("random.pth", "not a readable torch checkpoint (truncated or not a torch file)"),
    ("object.pth", "holds pickled Python objects besides tensors, which are never unpickled here"),
    ("bad.safetensors", "not a readable .safetensors file"),
])
def test_weights_files_that_are_not_weights(bad_weights, name, message):
    path = str(bad_weights / name)
    with pytest.raises(ValueError) as info:
        load_state_dict_file(path)
    text = str(info.value)
    assert text.startswith(path) and message in text and "\n" not in text and "weights_only=False" not in text


# (tool, arguments, the one line's key phrase)
CASES = {
    "unknown key": ("train_net.py", ["--config-file", TINY, "SOLVER.MAXITER", "10"],
                    "unknown config key SOLVER.MAXITER (in the command-line overrides); did you mean SOLVER.MAX_ITER?"),
    "bad value": ("train_net.py", ["--config-file", TINY, "SOLVER.MAX_ITER", "ten"], "for config key: SOLVER.MAX_ITER"),
    "odd overrides": ("train_net.py", ["--config-file", TINY, "SOLVER.MAX_ITER"], "come as KEY VALUE pairs"),
    "missing config": ("train_net.py", ["--config-file", "nope.yaml"], "config file not found: nope.yaml"),
    "analyze missing config": ("analyze_model.py", ["--config-file", "nope.yaml"], "config file not found: nope.yaml"),
    "eval missing weights": ("train_net.py", ["--config-file", TINY, "--eval-only", "MODEL.WEIGHTS", "nope.pth",
                                              "DATASETS.TEST", "()"], "checkpoint not found: nope.pth"),
    "demo unknown key": ("demo.py", ["--input", SCENE, "--config-file", TINY, "--opts", "MODEL.PIXELLLM.LANGUAGE.WEIGTHS", "x"],
                         "did you mean MODEL.PIXELLLM.LANGUAGE.WEIGHTS"),
    "demo garbage weights": ("demo.py", ["--input", SCENE, "--config-file", TINY, "--opts", "MODEL.WEIGHTS", "{garbage}"],
                             "not a readable torch checkpoint"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_status_2(case, bad_weights, tmp_path):
    tool, args, phrase = CASES[case]
    args = [a.replace("{garbage}", str(bad_weights / "garbage.pth")) for a in args]
    if tool == "train_net.py":
        args += ["OUTPUT_DIR", str(tmp_path / "out")]
    p = _tool(tool, *args)
    assert p.returncode == 2, p.stderr[-2000:]
    assert phrase in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    errors = [line for line in p.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--debug" in errors[0], p.stderr[-2000:]
    assert "weights_only=False" not in p.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    p = _tool("train_net.py", "--debug", "--config-file", TINY, "OUTPUT_DIR", str(tmp_path), "SOLVER.MAXITER", "10")
    assert p.returncode == 1 and "Traceback" in p.stderr and "ConfigError: unknown config key SOLVER.MAXITER" in p.stderr


def test_help_answers_before_heavy_imports():
    for tool in ("train_net.py", "demo.py", "analyze_model.py"):
        code = (f"import sys, runpy; sys.argv = ['{tool}', '--help']\n"
                f"try:\n    runpy.run_path(r'{os.path.join(REPO_ROOT, 'tools', tool)}', run_name='__main__')\n"
                "except SystemExit:\n    pass\n"
                "assert 'torch' not in sys.modules, 'torch imported for --help'\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONPATH=REPO_ROOT))
        assert p.returncode == 0 and "usage:" in p.stdout, (tool, p.stderr[-1500:])
