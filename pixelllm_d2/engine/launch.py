"""Start one process per device (or per CPU slot) and run a function in each, with torch.distributed set up.

Backends: NCCL when CUDA is available, gloo otherwise; so `--num-gpus N` on a machine without CUDA runs N CPU
processes (gloo), which is how multi-process training is exercised on CPU. Under `torchrun` (RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the environment) the process group is initialised from
the environment and the launch arguments are ignored.
"""
import datetime
import logging
import os
import socket
from typing import Callable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["launch", "launch_with_args", "DEFAULT_TIMEOUT"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def _setup_device_and_threads(local_rank: int, local_size: int) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # N CPU processes share the cores instead of each taking all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Tuple = (),
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run `main_func(*args)` in `num_machines * num_gpus_per_machine` processes.

    Args:
        main_func: a module-level (picklable) function.
        num_gpus_per_machine: processes on this machine: one per GPU, or CPU processes without CUDA.
        num_machines, machine_rank: the machines of the job and this machine's index.
        dist_url: the rendezvous, e.g. "tcp://10.0.0.1:29500"; "auto" or None picks a free local port (single
            machine only).
        args: arguments of `main_func`.
        timeout: of collective operations.
    """
    if _launched_by_torchrun():
        local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        _setup_device_and_threads(local_rank, local_size)
        dist.init_process_group(backend=_backend(), init_method="env://", timeout=timeout)
        logger.info(
            "Launched by torchrun: rank %d of %d (launch arguments ignored)", dist.get_rank(), dist.get_world_size()
        )
        try:
            main_func(*args)
        finally:
            dist.destroy_process_group()
        return

    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("dist_url='auto' works on a single machine only; give tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(f"{num_gpus_per_machine} processes per machine, but only {torch.cuda.device_count()} GPUs")
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def launch_with_args(main_func: Callable, args) -> None:
    """`launch(main_func, ..., args=(args,))` with the process layout of `args` (parsed by
    `default_argument_parser`: num_gpus, num_machines, machine_rank, dist_url)."""
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def _distributed_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Tuple,
    timeout: datetime.timedelta,
) -> None:
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    # The same variables torchrun sets, so `comm.get_local_rank` reads one source.
    os.environ.update(
        RANK=str(global_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(num_gpus_per_machine),
    )
    _setup_device_and_threads(local_rank, num_gpus_per_machine)
    dist.init_process_group(
        backend=_backend(), init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
    )
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
