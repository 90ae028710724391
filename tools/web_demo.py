#!/usr/bin/env python
"""An interactive web viewer of PixelLLM (Gradio: `pip install -e ".[web]"`), served on http://127.0.0.1:7860.

    python tools/web_demo.py                                   # the README's trained checkpoint
    python tools/web_demo.py --port 8000 --opts MODEL.WEIGHTS w.pth
    python tools/web_demo.py --random-init                     # no checkpoint: an untrained model, to try the page

One page: upload an image or pick an example; "Caption" shows the caption as a row of words (hovering or clicking a
word highlights its point and box over the whole trace); a click or two on the image (or typed numbers) captions a
point or a box; a typed expression gets its box and mask; "Detect and caption" lists the dense captions (hovering
or clicking one highlights its box). The image is encoded once and reused by every prompt on it.

The same four tasks are named API endpoints for gradio_client, /caption, /region, /refer and /densecap, each
answering with the demo's picture and the JSON tools/demo.py writes (docs/DEMO.md).

Defaults as tools/demo.py: --config-file configs/shapes/pixelllm_tiny_shapes.yaml; weights: MODEL.WEIGHTS, else
<OUTPUT_DIR>/model_final.{pth,safetensors}. Without either the viewer does not start (exit status 2) unless
--random-init is given.
"""
import argparse
import importlib.util
import logging
import os
import sys
import tempfile

# Light imports only: --help and command-line errors answer before torch, Gradio and the model load.
from pixelllm_d2.utils import demo as demo_utils
from pixelllm_d2.utils.cli import add_debug_flag, check_opts, quiet_dependency_warnings, run_tool

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "shapes", "pixelllm_tiny_shapes.yaml")
DOCS_SCENE = os.path.join(REPO_ROOT, "docs", "demo", "inputs", "shapes_scene.png")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE", help="config (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--random-init", action="store_true",
                   help="run an untrained model (random weights) instead of refusing to start without a checkpoint")
    p.add_argument("--no-examples", action="store_true", help="offer no example images")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (MODEL.DEVICE cpu)")
    add_debug_flag(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="config overrides; must come last")
    return p


def parse_args(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    check_opts(parser, args.opts)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    return args


def setup_cfg(args):
    cfg = demo_utils.setup_cfg(args.config_file, args.opts, args.cpu, REPO_ROOT, DEFAULT_CONFIG)
    if args.random_init:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # not the OUTPUT_DIR's checkpoint either
        cfg.freeze()
    elif not cfg.MODEL.WEIGHTS:
        raise FileNotFoundError(
            f"no checkpoint: MODEL.WEIGHTS is empty and {cfg.OUTPUT_DIR} has no model_final.pth / .safetensors; "
            "train one (README), pass --opts MODEL.WEIGHTS FILE, or --random-init for an untrained model"
        )
    elif not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise FileNotFoundError(f"no checkpoint: MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} does not exist")
    return cfg


def serve(args) -> int:
    cfg = setup_cfg(args)
    if importlib.util.find_spec("gradio") is None:
        raise ImportError('the web viewer needs Gradio: pip install -e ".[web]"')
    import torch

    from pixelllm_d2.predictor import PixelLLMPredictor
    from pixelllm_d2.web.app import build_app, launch
    from pixelllm_d2.web.examples import write_examples
    from pixelllm_d2.web.service import DemoService

    if cfg.SEED >= 0:  # the same untrained model on every start with --random-init
        torch.manual_seed(cfg.SEED)
    predictor = PixelLLMPredictor(cfg)
    weights = cfg.MODEL.WEIGHTS or "none (random initialisation)"
    print(f"config: {args.config_file}\nweights: {weights}", flush=True)
    shown = [os.path.relpath(p, REPO_ROOT) if os.path.abspath(p).startswith(REPO_ROOT + os.sep) else p for p in (args.config_file, weights)]
    with tempfile.TemporaryDirectory(prefix="pixelllm_web_") as folder:
        examples = [] if args.no_examples else write_examples(folder, DOCS_SCENE)
        model_line = f"config {shown[0]}, weights {shown[1]}"
        app = build_app(DemoService(predictor), examples, model_line)
        print(f"serving on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
        launch(app, args.host, args.port, block=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_dependency_warnings()
    return run_tool(serve, args, "web_demo.py", errors=(ImportError,))


if __name__ == "__main__":
    sys.exit(main())
