from .configurable import configurable
from .defaults import CfgNode, ConfigError, _C

__all__ = ["CfgNode", "ConfigError", "configurable", "get_cfg"]


def get_cfg() -> CfgNode:
    """A fresh copy of the default config (paper-scale architecture); merge a YAML file into it with
    `cfg.merge_from_file(path)` (`_BASE_` inheritance) and `KEY VALUE` overrides with `cfg.merge_from_list`."""
    return _C.clone()
