"""tools/web_demo.py: its command line, and the named API endpoints through gradio_client against a server on a
free localhost port (an untrained model of the shapes config, as CI has no checkpoint; the trained checkpoint's
checks skip without it). The browser test is test_web_demo_browser.py."""
import glob
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ..conftest import REPO_ROOT
from ..images import draw_shapes_scene, one_cpu_thread
from .web_servers import SCENE, SHAPES_CFG, WEB_DEMO, in_process_server

pytest.importorskip("gradio", reason="the web viewer needs the `web` extra (pip install -e '.[web]')")
gradio_client = pytest.importorskip("gradio_client")

pytestmark = [
    pytest.mark.usefixtures(one_cpu_thread.__name__),
    pytest.mark.filterwarnings("ignore::Warning:gradio"),  # pandas deprecations inside Gradio's queue
]

SHAPES_OUT = os.path.join(REPO_ROOT, "output", "pixelllm_tiny_shapes")
ENDPOINTS = {"/caption", "/region", "/refer", "/densecap"}


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"pixelllm_{name}", os.path.join(REPO_ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool(*args, timeout=60):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable, WEB_DEMO, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout)


# ------------------------------------------------------------------------------------------------- command line
def test_help_imports_neither_torch_nor_gradio():
    code = ("import runpy, sys\nsys.argv = ['web_demo.py', '--help']\n"
            f"try:\n    runpy.run_path({WEB_DEMO!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('LOADED', 'torch' in sys.modules, 'gradio' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT), cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr
    assert "--random-init" in res.stdout and "/caption" in res.stdout
    assert "LOADED False False" in res.stdout  # what keeps --help fast (timings belong in benchmarks)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--opts", "OUTPUT_DIR", "{tmp}"], "no checkpoint: MODEL.WEIGHTS is empty and {tmp} has no model_final.pth / .safetensors"),
        (["--opts", "MODEL.WEIGHTS", "{tmp}/gone.pth"], "no checkpoint: MODEL.WEIGHTS {tmp}/gone.pth does not exist"),
        (["--config-file", "{tmp}/no.yaml"], "config file not found: {tmp}/no.yaml"),
        (["--opts", "MODEL.NO_SUCH_KEY", "1"], "MODEL.NO_SUCH_KEY"),
        (["--opts", "MODEL.WEIGHTS"], "--opts needs KEY VALUE pairs"),
        (["--port", "0"], "--port must be in 1..65535"),
    ],
)
def test_bad_start_is_one_line_and_exit_2(tmp_path, args, message):
    res = _tool(*[a.format(tmp=tmp_path) for a in args])
    assert res.returncode == 2, res.stderr
    assert message.format(tmp=tmp_path) in res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------------- the endpoints
def _shapes_predictor(weights: str = ""):
    from pixelllm_d2.config import get_cfg
    from pixelllm_d2.predictor import PixelLLMPredictor

    cfg = get_cfg()
    cfg.merge_from_file(SHAPES_CFG)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    torch.manual_seed(cfg.SEED)  # as tools/demo.py and tools/web_demo.py: the same untrained weights
    return PixelLLMPredictor(cfg)


class _EncoderCalls:
    """Counts the image encoder's (the backbone's) forward passes."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.backbone.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


@pytest.fixture(scope="module")
def server(one_cpu_thread):
    """An untrained shapes model behind an in-process server: (client, service, encoder-call counter)."""
    predictor = _shapes_predictor()
    calls = _EncoderCalls(predictor.model)
    with in_process_server(predictor) as (url, service):
        yield gradio_client.Client(url, verbose=False), service, calls
    calls.handle.remove()


def _call(client, api, image, *args):
    picture, record = client.predict(gradio_client.handle_file(image) if image else None, *args, api_name=api)
    return picture, record


def _inside(xy, W, H):
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return bool(((xy >= 0) & (xy <= [W, H])).all())


def test_named_endpoints(server):
    client, _, _ = server
    info = client.view_api(print_info=False, return_format="dict")
    assert set(info["named_endpoints"]) == ENDPOINTS
    assert not info["unnamed_endpoints"]
    params = {api: [p["parameter_name"] for p in info["named_endpoints"][api]["parameters"]] for api in ENDPOINTS}
    assert params == {"/caption": ["image"], "/region": ["image", "prompt"], "/refer": ["image", "text"], "/densecap": ["image"]}


def test_every_endpoint_answers_the_demos_json_and_a_picture(server):
    client, _, _ = server
    W, H = Image.open(SCENE).size
    asks = {"/caption": [], "/region": ["10 20 180 150; 0 0 60.5 40"], "/refer": ["the red circle\nthe blue square"], "/densecap": []}
    for api, args in asks.items():
        picture, record = _call(client, api, SCENE, *args)
        task = api[1:]
        assert (record["image"], record["width"], record["height"], record["task"]) == ("shapes_scene.png", W, H, task)
        expected = {"/caption": 1, "/region": 2, "/refer": 2}.get(api)
        assert len(record["results"]) == expected if expected else len(record["results"]) >= 1
        for r in record["results"]:
            assert isinstance(r["caption"], str) and isinstance(r["score"], float) and _inside(r["box"], W, H)
            assert all(set(w) == {"word", "point", "box"} and _inside(w["point"], W, H) for w in r["words"])
        with Image.open(picture) as p:  # the demo's picture: the image upscaled to 512 px plus its caption strip
            assert p.format == "PNG" and p.width == 512 and p.height > round(H * 512 / W)
    _, record = _call(client, "/region", SCENE, "100 120; 140 150")
    assert record["results"][0]["points"] == [[100.0, 120.0], [140.0, 150.0]] and "box" not in record["results"][0]
    _, record = _call(client, "/refer", SCENE, "the red circle\nthe blue square")
    assert [r["caption"] for r in record["results"]] == ["the red circle", "the blue square"]
    assert all(r["mask_rle"]["size"] == [H, W] and isinstance(r["mask_score"], float) for r in record["results"])


@pytest.mark.parametrize("task, args", [("caption", []), ("refer", ["--text", "the red circle", "--text", "the blue square"])])
def test_json_is_exactly_tools_demo_json(server, tmp_path, capsys, task, args):
    """The endpoint's JSON is what `tools/demo.py` writes for the same image, config and (untrained, seeded)
    weights, but for the "image" field (the demo: the path given; the viewer: the file's name)."""
    client, _, _ = server
    rc = _load_tool("demo").main(["--config-file", SHAPES_CFG, "--cpu", "--input", SCENE, "--output", str(tmp_path), "--task", task, *args,
                    "--opts", "OUTPUT_DIR", str(tmp_path / "no_checkpoint")])
    assert rc == 0, capsys.readouterr().err
    with open(tmp_path / "shapes_scene.json") as f:
        written = json.load(f)
    _, record = _call(client, f"/{task}", SCENE, *(["\n".join(args[1::2])] if args else []))
    assert written.pop("image") == SCENE and record.pop("image") == "shapes_scene.png"
    assert record == written


def test_prompts_on_one_image_encode_it_once(server, tmp_path):
    client, service, calls = server
    scene = tmp_path / "other_scene.png"
    Image.fromarray(draw_shapes_scene(160, 224)[0]).save(scene)
    before, encodings = calls.n, service.num_image_encodings
    start = time.perf_counter()
    _call(client, "/caption", str(scene))
    first = time.perf_counter() - start
    assert (calls.n, service.num_image_encodings) == (before + 1, encodings + 1)
    start = time.perf_counter()
    for api, args in (("/refer", ["the red circle"]), ("/region", ["10 10 100 100"]), ("/region", ["50 60"]), ("/densecap", []), ("/caption", [])):
        _call(client, api, str(scene), *args)
    print(f"first prompt {first:.2f} s (encodes), 5 more prompts {time.perf_counter() - start:.2f} s; "
          f"encoder calls {calls.n - before}, predictor encodings {service.num_image_encodings - encodings}")
    assert (calls.n, service.num_image_encodings) == (before + 1, encodings + 1)  # the feature cache, not the encoder
    _call(client, "/caption", SCENE)  # another image: encoded
    assert calls.n == before + 2


@pytest.mark.parametrize(
    "api, image, args, message",
    [
        ("/caption", "broken", [], "broken.jpg: cannot read image: UnidentifiedImageError"),
        ("/caption", "truncated", [], "truncated.png: cannot read image"),
        ("/caption", None, [], "no image: upload one or pick an example"),
        ("/refer", SCENE, ["  \n "], "refer needs a referring expression"),
        ("/region", SCENE, ["0 0 400 100"], "boxes outside the 256x192 image"),
        ("/region", SCENE, ["300 20"], "points outside the 256x192 image"),
        ("/region", SCENE, ["50 10 20 40"], "x1 < x0"),
        ("/region", SCENE, [""], "region needs a prompt"),
        ("/region", SCENE, ["1 2 3"], "has 3 numbers"),
        ("/region", SCENE, ["1 2 3 4; 5 6"], "boxes and points cannot be mixed"),
    ],
)
def test_bad_input_is_one_line(server, tmp_path, api, image, args, message):
    client, _, _ = server
    if image == "broken":
        image = str(tmp_path / "broken.jpg")
        with open(image, "wb") as f:
            f.write(b"\xff\xd8 this is not a jpeg")
    elif image == "truncated":
        image = str(tmp_path / "truncated.png")
        with open(SCENE, "rb") as f:
            data = f.read()
        with open(image, "wb") as f:
            f.write(data[: len(data) // 2])
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        _call(client, api, image, *args)
    text = str(e.value)
    assert message in text and "\n" not in text and "Traceback" not in text


def test_densecap_on_a_model_without_the_head_is_one_line(one_cpu_thread):
    from pixelllm_d2.config import get_cfg
    from pixelllm_d2.predictor import PixelLLMPredictor

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "tiny", "pixelllm_tiny.yaml"))
    with in_process_server(PixelLLMPredictor(cfg)) as (url, _):
        with pytest.raises(gradio_client.exceptions.AppError, match="model built without MODEL.DENSECAP_ON"):
            _call(gradio_client.Client(url, verbose=False), "/densecap", SCENE)


# ------------------------------------------------------------------------------------------------- trained model
def _trained_weights() -> str:
    found = sorted(p for p in glob.glob(os.path.join(SHAPES_OUT, "model_final.*")) if p.endswith((".pth", ".safetensors")))
    if not found:
        pytest.skip(f"trained embedded-benchmark checkpoint not present ({SHAPES_OUT}/model_final.*)")
    return max(found, key=os.path.getmtime)


def _val_scenes_with(expression: str):
    from pixelllm_d2.data import DatasetCatalog
    from pixelllm_d2.data.datasets.builtin import dataset_root

    if not os.path.isdir(os.path.join(dataset_root(), "shapes", "refcoco")):
        pytest.skip("the shapes benchmark is not generated (the README's training command writes it)")
    for d in DatasetCatalog.get("shapes_refcoco_val"):
        for a in d["annotations"]:
            if expression in a["sentences"]:
                yield d, a


def test_trained_model_through_the_api(one_cpu_thread):
    """Held-out (validation) shapes scenes: the caption's words point inside the image (and its shape words onto
    drawn objects); "the red circle" gets a box with IoU > 0.5 with the drawn circle."""
    from pixelllm_d2.structures import box_iou

    weights = _trained_weights()
    scenes = list(_val_scenes_with("the red circle"))
    with in_process_server(_shapes_predictor(weights)) as (url, _):
        client = gradio_client.Client(url, verbose=False)
        d, _ = scenes[0]
        W, H = d["width"], d["height"]
        _, record = _call(client, "/caption", os.path.abspath(d["file_name"]))
        words = record["results"][0]["words"]
        inside = sum(_inside(w["point"], W, H) for w in words)
        objects = [a["bbox"] for a in d["annotations"]]
        nouns = [w for w in words if w["word"] in ("circle", "square", "triangle")]
        on_object = sum(any(b[0] <= w["point"][0] <= b[2] and b[1] <= w["point"][1] <= b[3] for b in objects) for w in nouns)
        print(f"{os.path.basename(d['file_name'])}: \"{record['results'][0]['caption']}\": {inside} of {len(words)} word points "
              f"inside the {W}x{H} image; {on_object} of {len(nouns)} shape words on a drawn object")
        assert len(words) >= 3 and inside == len(words)
        assert on_object >= max(1, len(nouns) // 2)
        ious = []
        for d, a in scenes:
            _, record = _call(client, "/refer", os.path.abspath(d["file_name"]), "the red circle")
            ious.append(float(box_iou(torch.tensor([record["results"][0]["box"]]), torch.tensor([a["bbox"]]))[0, 0]))
        print(f'"the red circle" on {len(ious)} validation scenes: IoU first {ious[0]:.3f}, mean {np.mean(ious):.3f}, '
              f"min {min(ious):.3f}, > 0.5: {sum(i > 0.5 for i in ious)} of {len(ious)}")
        assert ious[0] > 0.5
        assert sum(i > 0.5 for i in ious) >= 0.6 * len(ious)  # a sanity bound: 17 of 21 with the README checkpoint
