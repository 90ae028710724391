"""detectron2's `configurable` idea, small: a module's `__init__` takes keyword arguments, and a `from_config(cfg,
...)` classmethod turns a config into those arguments, so `Module(cfg)` and `Module(**kwargs)` both work."""
import functools
import inspect

from fvcore.common.config import CfgNode as _FvCfgNode

__all__ = ["configurable"]


def configurable(init_func):
    """Decorate `__init__` of a class that defines `from_config(cls, cfg, *args, **kwargs) -> dict`."""
    if init_func.__name__ != "__init__":
        raise TypeError("@configurable decorates __init__ only")

    @functools.wraps(init_func)
    def wrapped(self, *args, **kwargs):
        if (args and isinstance(args[0], _FvCfgNode)) or isinstance(kwargs.get("cfg"), _FvCfgNode):
            from_config = getattr(type(self), "from_config", None)
            if from_config is None or not inspect.ismethod(from_config):
                raise AttributeError(f"{type(self).__name__} needs a from_config classmethod to be built from a cfg")
            init_kwargs = from_config(*args, **kwargs)
            init_func(self, **init_kwargs)
        else:
            init_func(self, *args, **kwargs)

    return wrapped
