#!/usr/bin/env python
"""Run PixelLLM on images: a picture (per-word trace, boxes with captions, blended masks) and a JSON of every
output in original-image pixels per input, plus a short summary on stdout.

    python tools/demo.py --input img.jpg                                  # caption, a location per word
    python tools/demo.py --input photos/ "more/*.jpg" --task region --box 10 20 200 180 --box 0 0 50 50
    python tools/demo.py --input img.jpg --task region --point 120 80 --point 130 95
    python tools/demo.py --input img.jpg --task refer --text "the red circle"
    python tools/demo.py --config-file CFG --input img.jpg --task densecap --opts MODEL.WEIGHTS w.pth

Defaults: --config-file configs/shapes/pixelllm_tiny_shapes.yaml; weights: MODEL.WEIGHTS, else
<OUTPUT_DIR>/model_final.{pth,safetensors} when present (the checkpoint of the README's training command);
--output demo_output/. For each input <stem>.png and <stem>.json are written to the output folder. An input that
fails (missing, unreadable, a box outside it, ...) is reported and the others are still processed; the exit
status is 1 when any failed (2 for a malformed command line).
"""
import argparse
import glob
import logging
import os
import sys
import time

# Light imports only: --help and command-line errors answer before torch and the model load.
from pixelllm_d2.tasks import PREDICTOR_TASKS, get_task, task_names
from pixelllm_d2.utils import demo as demo_utils
from pixelllm_d2.utils.cli import add_debug_flag, check_opts, debug_requested, error_line, quiet_dependency_warnings

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "shapes", "pixelllm_tiny_shapes.yaml")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

logger = logging.getLogger("pixelllm_d2.demo")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE", help="config (default: %(default)s)")
    p.add_argument("--input", nargs="+", required=True, help="image paths, globs (quote them) or folders")
    p.add_argument("--output", default="demo_output", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--task", default="caption", choices=PREDICTOR_TASKS)
    p.add_argument("--box", nargs="+", action="append", metavar="X", help="region: X0 Y0 X1 Y1 in original pixels (repeatable: one caption per box)")
    p.add_argument("--point", nargs="+", action="append", metavar="X", help="region: X Y in original pixels (repeatable: all points form one prompt)")
    p.add_argument("--text", action="append", help="refer: the referring expression (repeatable: one result per expression)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (MODEL.DEVICE cpu)")
    add_debug_flag(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="config overrides; must come last")
    return p


def _numbers(parser, values, n: int, what: str):
    out = []
    for v in values or []:
        if len(v) != n:
            parser.error(f"{what} expects {n} numbers, got {len(v)}: {' '.join(v)}")
        try:
            out.append([float(x) for x in v])
        except ValueError:
            parser.error(f"{what} expects numbers, got: {' '.join(v)}")
    return out or None


def _names(**where) -> str:
    return " / ".join(t for t in task_names(**where) if t in PREDICTOR_TASKS)


def parse_args(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    args.box = _numbers(parser, args.box, 4, "--box X0 Y0 X1 Y1")
    args.point = _numbers(parser, args.point, 2, "--point X Y")
    task = get_task(args.task)
    boxed, texted = task.prompt_box == "query", task.text_at_test == "given"
    if not boxed and (args.box or args.point):
        parser.error(f"--box / --point are prompts of --task {_names(prompt_box='query')}, not --task {args.task}")
    if boxed and bool(args.box) == bool(args.point):
        parser.error(f"--task {args.task} needs --box (one or more) or --point (one or more), not both")
    if texted and args.text is None:
        parser.error(f'--task {args.task} needs --text "the referring expression"')
    if not texted and args.text is not None:
        parser.error(f"--text is the expression of --task {_names(text_at_test='given')}, not --task {args.task}")
    check_opts(parser, args.opts)
    return args


def expand_inputs(specs):
    """Paths from files, folders (their images, sorted) and globs (sorted). Returns (paths, errors) where each
    error is (spec, message) for a folder without images or a glob matching nothing; missing files are kept as
    paths so that reading them reports the error."""
    paths, errors = [], []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                errors.append((spec, f"folder has no images ({', '.join(IMAGE_EXTENSIONS)})"))
            paths.extend(found)
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            if not found:
                errors.append((spec, "no file matches this pattern"))
            paths.extend(found)
        else:
            paths.append(spec)
    unique = list(dict.fromkeys(paths))
    return unique, errors


def output_stems(paths):
    """A distinct file stem per path (`name`, `name_1`, ... when two inputs share a name)."""
    used, stems = set(), []
    for p in paths:
        base = os.path.splitext(os.path.basename(p))[0] or "image"
        stem, i = base, 1
        while stem in used:
            stem, i = f"{base}_{i}", i + 1
        used.add(stem)
        stems.append(stem)
    return stems


def default_weights(cfg) -> str:
    """cfg.MODEL.WEIGHTS, else the newest <OUTPUT_DIR>/model_final.{pth,safetensors} (OUTPUT_DIR relative to the
    working directory, then to the repository root), else ""."""
    return demo_utils.default_weights(cfg, REPO_ROOT)


def setup_cfg(args):
    return demo_utils.setup_cfg(args.config_file, args.opts, args.cpu, REPO_ROOT, DEFAULT_CONFIG)


def summarize(stem: str, record) -> str:
    lines = [f"{stem}: {record['width']}x{record['height']} {record['task']}, {len(record['results'])} result(s)"]
    for k, r in enumerate(record["results"][:10]):
        where = f"points {r['points']}" if "points" in r else f"box {[round(v, 1) for v in r['box']]}"
        mask = f", mask {r['mask_score']:.2f}" if "mask_rle" in r else ""
        lines.append(f"  [{k + 1}] \"{r['caption']}\" {where} score {r['score']:.3f}{mask} ({len(r['words'])} words)")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the demo; returns the exit status (0: all inputs processed, 1: some failed)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_dependency_warnings()
    paths, failures = expand_inputs(args.input)
    total = len(paths) + len(failures)  # a folder without images or an empty glob counts as one failed input
    failures += [(p, f"{p}: cannot read image: file does not exist") for p in paths if not os.path.isfile(p)]
    paths = [p for p in paths if os.path.isfile(p)]  # checked before the model is built
    stems = output_stems(paths)
    if not paths:  # nothing to run: the model is not built
        return _report(failures, total)
    try:
        cfg = setup_cfg(args)
        print(f"config: {args.config_file}\nweights: {cfg.MODEL.WEIGHTS or 'none (random initialisation)'}")
        if not cfg.MODEL.WEIGHTS:
            logger.warning("no weights: MODEL.WEIGHTS is empty and %s has no model_final.pth / .safetensors", cfg.OUTPUT_DIR)
        import torch

        from pixelllm_d2.predictor import PixelLLMPredictor, read_image
        from pixelllm_d2.utils.serialization import write_json
        from pixelllm_d2.utils.visualizer import save_image

        if cfg.SEED >= 0:  # reproducible pictures from configs without trained weights
            torch.manual_seed(cfg.SEED)
        predictor = PixelLLMPredictor(cfg)
    except (FileNotFoundError, ValueError, KeyError) as e:
        if debug_requested(args):
            raise
        print(error_line(e), file=sys.stderr)
        return 2
    # Read and validate every input first, so a bad one is reported and the good ones still go through in batches.
    ready = []
    for path, stem in zip(paths, stems):
        try:
            image = read_image(path)
            x = predictor.prepare(image, args.task, args.box, args.point, args.text, name=path)
            ready.append((path, stem, image, x))
        except (FileNotFoundError, ValueError, TypeError) as e:
            failures.append((path, str(e)))
    os.makedirs(args.output, exist_ok=True)
    for i in range(0, len(ready), predictor.batch_size):
        chunk = ready[i : i + predictor.batch_size]
        start = time.perf_counter()
        try:
            outputs = predictor.run([x for _, _, _, x in chunk])
        except (ValueError, RuntimeError) as e:
            failures.extend((path, f"model: {e}") for path, _, _, _ in chunk)
            continue
        seconds = (time.perf_counter() - start) / len(chunk)
        for (path, stem, image, _), out in zip(chunk, outputs):
            record, picture = demo_utils.demo_outputs(out, image, path, texts=args.text, points=args.point)
            write_json(os.path.join(args.output, f"{stem}.json"), record)
            save_image(os.path.join(args.output, f"{stem}.png"), picture)
            print(summarize(stem, record) + f"\n  -> {os.path.join(args.output, stem)}.png / .json ({seconds:.2f} s)")
    return _report(failures, total)


def _report(failures, total: int) -> int:
    for spec, message in failures:
        print(f"error: {spec}: {message}" if not message.startswith(spec) else f"error: {message}", file=sys.stderr)
    print(f"done: {total - len(failures)} of {total} input(s) processed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
