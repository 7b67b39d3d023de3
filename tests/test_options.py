"""The streamer's flags are resolved once: each into the config or into RunOptions, never both, none left over."""

from __future__ import annotations

import dataclasses

import pytest

from configs import load_config
from streamer.__main__ import check_flags, make_parser, parse_args
from streamer.options import TURNED_INTO_OPTIONS, USED_BEFORE_THE_RUN, RunOptions, resolve

OPTION_FIELDS = {f.name for f in dataclasses.fields(RunOptions)}


def _is_config_key(dest: str) -> bool:
    section = load_config(None, "stream.py")
    *parents, key = dest.split(".")
    for name in parents:
        if name not in section:
            return False
        section = section[name]
    return key in section


def test_every_flag_has_exactly_one_home():
    for action in make_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        homes = [
            action.dest in OPTION_FIELDS,
            _is_config_key(action.dest),
            action.dest in USED_BEFORE_THE_RUN + TURNED_INTO_OPTIONS,
        ]
        assert sum(homes) == 1, f"{action.option_strings[0]} (dest {action.dest!r}): homes {homes}"


def test_no_run_option_is_a_config_key():
    assert not [name for name in OPTION_FIELDS if _is_config_key(name)]


def test_resolve_puts_each_flag_in_its_one_home(tmp_path):
    args = parse_args(
        [
            "--rate", "50", "--limit", "7", "--model", str(tmp_path), "--replicas", "2", "--timeout", "9",
            "--server", "external", "--topic-suffix", "x", "--run-id", "r1", "--no-verify", "--warm-up", "3",
            "--confidence-level", "0.9", "--compare", "other",
        ]
    )  # fmt: skip
    assert check_flags(args) is None
    config, options = resolve(args)
    assert (config.streamer.rate, config.streamer.limit, config.model_dir) == (50.0, 7, str(tmp_path))
    assert (config.server.replicas, config.collector.timeout_s, config.intervals.level) == (2, 9.0, 0.9)
    assert options == RunOptions(
        server_mode="external", topic_suffix="x", run_id="r1", verify=False, warm_up=3, compare="other"
    )
    # Flags not given keep the config's defaults.
    assert config.streamer.streams == load_config(None, "stream.py").streamer.streams


def test_a_flag_with_no_home_is_refused():
    args = parse_args([])
    args.not_a_flag = 1
    with pytest.raises(KeyError, match="not_a_flag"):
        resolve(args)
