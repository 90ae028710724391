"""tools/train_net.py's `main` with the toy trainer (or, with ENGINE_TEST_TRAINER=real, the real
`DefaultTrainer`), for subprocess tests. Environment switches kill the process with SIGKILL (no cleanup, like
`kill -9`) at a chosen point:

- ENGINE_TEST_KILL_AT_ITER=k: after iteration k's step, before that iteration's checkpoint could be saved;
- ENGINE_TEST_KILL_AT=torch_save:NAME[:n]: during the n-th (default 1st) checkpoint write of file NAME, with
  half of its bytes written to the temporary file;
- ENGINE_TEST_KILL_AT=replace:NAME[:n]: when the n-th write of NAME is complete and synced under its temporary
  name, before the rename onto NAME.
"""
import importlib.util
import os
import signal
import sys

from engine_toy import ToyTrainer

from pixelllm_d2.engine import DefaultTrainer, HookBase, default_argument_parser, launch_with_args

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("train_net", os.path.join(_ROOT, "tools", "train_net.py"))
train_net = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_net)


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAtIter(HookBase):
    def __init__(self, k: int):
        self.k = k

    def after_step(self) -> None:
        if self.trainer.iter == self.k:
            _die()


def killable(trainer_cls):
    """`trainer_cls` with a hook that kills the process after iteration ENGINE_TEST_KILL_AT_ITER's step."""

    class Killable(trainer_cls):
        def build_hooks(self):
            ret = super().build_hooks()
            k = os.environ.get("ENGINE_TEST_KILL_AT_ITER")
            if k is not None:
                at = next(i for i, h in enumerate(ret) if type(h).__name__ == "PeriodicCheckpointer")
                ret.insert(at, _KillAtIter(int(k)))
            return ret

    return Killable


def _install_kill_switch(spec: str) -> None:
    import io

    import torch

    stage, name, *n = spec.split(":")
    nth = int(n[0]) if n else 1
    seen = [0]

    def hit(target: str) -> bool:
        if os.path.basename(target) != name:
            return False
        seen[0] += 1
        return seen[0] == nth

    if stage == "replace":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if hit(str(dst)):
                _die()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif stage == "torch_save":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            # The temporary file is named ".<target>.<random>.tmp".
            target = os.path.basename(getattr(f, "name", "")).lstrip(".").split(".tmp")[0].rsplit(".", 1)[0]
            if hit(target):
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                _die()
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    else:
        raise ValueError(f"unknown kill stage {stage!r}")


def main(args):
    if "ENGINE_TEST_KILL_AT" in os.environ:
        _install_kill_switch(os.environ["ENGINE_TEST_KILL_AT"])
    base = DefaultTrainer if os.environ.get("ENGINE_TEST_TRAINER") == "real" else ToyTrainer
    return train_net.main(args, killable(base))


if __name__ == "__main__":
    from pixelllm_d2.utils.cli import run_tool

    args = default_argument_parser().parse_args()
    run_tool(lambda a: launch_with_args(main, a), args, "train_net.py")
