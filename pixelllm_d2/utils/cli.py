"""How the command-line tools fail: bad input (an unknown config key, a missing file, a bad value, weights that do
not fit, a missing dependency of evaluation) is one line on stderr and exit status 2, as argparse does for a
malformed command line; `--debug` (or PIXELLLM_DEBUG=1) re-raises it with its traceback. Anything else is a bug and
keeps its traceback."""
import argparse
import os
import sys
import warnings
from typing import Callable, Optional

__all__ = ["USAGE_ERRORS", "default_argument_parser", "add_debug_flag", "check_opts", "debug_requested",
           "error_line", "quiet_dependency_warnings", "run_tool"]

# What bad input raises in this toolkit: ConfigError and the weights / dataset / option checks are ValueErrors.
USAGE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError, KeyError)


def add_debug_flag(parser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (also: PIXELLLM_DEBUG=1)")


def check_opts(parser, opts) -> None:
    """A usage error (exit 2, before anything heavy loads) unless `--opts` holds KEY VALUE pairs."""
    if len(opts) % 2:
        parser.error(f"--opts needs KEY VALUE pairs, got {len(opts)} items")


def debug_requested(args=None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("PIXELLLM_DEBUG", "") not in ("", "0")


def quiet_dependency_warnings() -> None:
    """Hide the deprecation warnings dependencies print at import (transformers, timm): they concern the
    libraries' own code, and a user of the tools can do nothing about them."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|timm|torch|peft|huggingface_hub)\b")


def error_line(e: BaseException, prog: str = "") -> str:
    """The one line a usage error is reported as: `[<prog>: ]error: <message>  [--debug shows the traceback]` (a
    KeyError's message without its quotes, whitespace collapsed)."""
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    message = " ".join(str(message).split()) or type(e).__name__
    return f"{prog + ': ' if prog else ''}error: {message}  [--debug shows the traceback]"


def run_tool(main: Callable, args, prog: str = "", errors: tuple = ()) -> object:
    """`main(args)`, with a usage error (`USAGE_ERRORS` + `errors`) reported as one line
    `<prog>: error: <message>` and exit status 2.

    Returns:
        what `main` returns.
    """
    try:
        return main(args)
    except USAGE_ERRORS + tuple(errors) as e:
        if debug_requested(args):
            raise
        print(error_line(e, prog or os.path.basename(sys.argv[0])), file=sys.stderr, flush=True)
        sys.exit(2)


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's command line: --config-file, --resume, --eval-only, --num-gpus, --num-machines,
    --machine-rank, --dist-url, then `KEY VALUE` config overrides."""
    parser = argparse.ArgumentParser(
        epilog=epilog
        or (
            "Examples:\n"
            "  Train on 1 process:  python tools/train_net.py --config-file cfg.yaml\n"
            "  Resume after a stop: python tools/train_net.py --config-file cfg.yaml --resume\n"
            "  8 GPUs:              python tools/train_net.py --config-file cfg.yaml --num-gpus 8\n"
            "  2 CPU processes (a machine without CUDA, gloo): ... --num-gpus 2\n"
            "  torchrun:            torchrun --nproc-per-node 8 tools/train_net.py --config-file cfg.yaml\n"
            "  Evaluate weights:    python tools/train_net.py --config-file cfg.yaml --eval-only \\\n"
            "                           MODEL.WEIGHTS output/model_final.safetensors\n"
            "  Override keys:       ... SOLVER.BASE_LR 1e-4 SOLVER.MAX_ITER 1000"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from OUTPUT_DIR/last_checkpoint (weights, optimizer, scheduler, iteration, data "
        "position, RNG states) if it exists; otherwise start from MODEL.WEIGHTS",
    )
    parser.add_argument("--eval-only", action="store_true", help="load MODEL.WEIGHTS, evaluate DATASETS.TEST, exit")
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes per machine: one per GPU; on a machine without CUDA, this many CPU processes (gloo)",
    )
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="rendezvous of multi-process training: 'auto' (a free local port, single machine) or tcp://HOST:PORT "
        "of machine 0",
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an OUTPUT_DIR that holds one (its checkpoints are replaced)")
    add_debug_flag(parser)
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs at the end of the command, e.g. SOLVER.MAX_ITER 100",
    )
    return parser
