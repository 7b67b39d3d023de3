"""Python config files (`get_config()`), in the style of Flax's examples."""

import importlib.util
from pathlib import Path

import ml_collections

CONFIG_DIR = Path(__file__).resolve().parent


def load_config(path: str | Path | None, default: str) -> ml_collections.ConfigDict:
    """Import a config file and return its get_config(); `default` names a file in configs/."""
    path = Path(path) if path else CONFIG_DIR / default
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
