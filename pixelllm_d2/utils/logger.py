"""Logging set-up in detectron2's manner: one named logger per package, colourless console + optional file."""
import functools
import logging
import os
import sys

__all__ = ["setup_logger"]


@functools.lru_cache()
def setup_logger(output: str = None, distributed_rank: int = 0, name: str = "pixelllm_d2") -> logging.Logger:
    """Configure and return the logger `name`: INFO to stdout on rank 0, DEBUG to `output` (a file, or a folder
    that receives `log.txt`; other ranks write `log.txt.rank{N}`)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    fmt = logging.Formatter("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S")
    if distributed_rank == 0:
        ch = logging.StreamHandler(stream=sys.stdout)
        ch.setLevel(logging.INFO)
        ch.setFormatter(fmt)
        logger.addHandler(ch)
    if output is not None:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(filename) or ".", exist_ok=True)
        fh = logging.FileHandler(filename, mode="a")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger
