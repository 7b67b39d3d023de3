"""Python config files (`get_config()`), in the style of Flax's examples."""

import argparse
import ast
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def override(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Set each dotted key ("server.max_batch_size") whose value is not None; an unknown key is an error.

    The one way command-line flags reach a config: every entry point names its flags' keys here.
    """
    for dotted, value in values.items():
        if value is None:
            continue
        *parents, key = dotted.split(".")
        section = config
        for name in parents:
            section = section[name]
        if key not in section:
            raise KeyError(f"unknown config key {dotted!r}")
        section[key] = value
    return config


def from_args(args: argparse.Namespace, default: str) -> ml_collections.ConfigDict:
    """--config FILE (else configs/<default>) with every flag that names a config key applied.

    A flag names its key through its dest: add_argument("--rate", dest="streamer.rate").
    """
    config = load_config(args.config, default)
    return override(config, {k: v for k, v in vars(args).items() if "." in k or k in config})


def config_flag_metavars(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--help shows `--rate RATE`, not `--rate STREAMER.RATE`, for flags whose dest names a config key."""
    for action in parser._actions:
        if action.option_strings and action.metavar is None and action.nargs != 0 and not action.choices:
            action.metavar = action.option_strings[0].lstrip("-").upper().replace("-", "_")
    return parser


def parse_overrides(args: Sequence[str], prefix: str = "--config.") -> dict[str, Any]:
    """["--config.a.b=value", ...] -> {"a.b": value}; values are Python literals where they parse, else strings."""
    out: dict[str, Any] = {}
    for arg in args:
        if not arg.startswith(prefix) or "=" not in arg:
            raise ValueError(f"unrecognised argument {arg!r} (config overrides look like {prefix}KEY=VALUE)")
        key, _, text = arg[len(prefix) :].partition("=")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out
