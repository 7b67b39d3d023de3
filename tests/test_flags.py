"""Flags checked before anything starts: every numeric or enumerated flag has a domain (configs/flags.py);
a value outside it is one line naming the flag and what it allows, exit 2, before JAX or the broker loads."""

from __future__ import annotations

import contextlib
import io
import math
import subprocess
import sys

import pytest
from helpers_train import ROOT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from configs import load_config
from configs.flags import (
    FLAGS,
    PROGRAM_FLAGS,
    TRAIN_CONFIG,
    TRAIN_TEXT,
    Either,
    FlagParser,
    Items,
    Numbers,
    OneOf,
    config_problems,
    domain_of,
)


def parsers() -> dict:
    """Every entry point's parser, built without importing JAX."""
    import bench.__main__
    import bench.intervals
    import bench.models
    import bench.stages
    import bench.train_steps
    import server.__main__
    import streamer.__main__
    import train.__main__
    import train.evaluate
    import train.predict

    return {
        "streamer": streamer.__main__.make_parser,
        "streamer report": streamer.__main__.make_report_parser,
        "server": server.__main__.make_parser,
        "train": train.__main__.make_parser,
        "train.evaluate": train.evaluate.make_parser,
        "train.predict": train.predict.make_parser,
        "bench": bench.__main__.make_parser,
        "bench.intervals": bench.intervals.make_parser,
        "bench.models": bench.models.make_parser,
        "bench.stages": bench.stages.make_parser,
        "bench.train_steps": bench.train_steps.make_parser,
    }


PARSERS = parsers()
# Every domain: FLAGS and TRAIN_CONFIG by key, PROGRAM_FLAGS as "prog: dest".
ALL_DOMAINS = sorted(
    [*FLAGS.items(), *TRAIN_CONFIG.items()]
    + [(f"{prog}: {dest}", d) for prog, flags in PROGRAM_FLAGS.items() for dest, d in flags.items()],
    key=lambda item: item[0],
)
REQUIRED = {"train.predict": ["x.png"], "bench.models": ["m"], "bench.train_steps": ["configs/smoke.py"]}


def numeric_flags() -> list[tuple[str, str, str, Numbers]]:
    """(entry point, flag, dest, domain) for every flag with a Numbers domain."""
    out = []
    for name, make in PARSERS.items():
        for action in make()._actions:
            domain = domain_of(f"python -m {name}", action.dest)
            if action.option_strings and isinstance(domain, Numbers):
                out.append((name, action.option_strings[0], action.dest, domain))
    return out


NUMERIC = numeric_flags()


def parse(name: str, argv: list[str]):
    """(namespace or None, exit code or None, stderr) of parsing argv with entry point `name`'s parser."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return PARSERS[name]().parse_args(REQUIRED.get(name, []) + argv), None, err.getvalue()
        except SystemExit as exit_:
            return None, exit_.code, err.getvalue()


# ------------------------------------------------------------- the table
def test_every_numeric_or_enumerated_flag_has_a_domain():
    """The rule for flags added later: a converted value (int, float, a list) or a fixed set of values
    means a line in configs/flags.py."""
    missing = []
    for name, make in PARSERS.items():
        parser = make()
        assert isinstance(parser, FlagParser) and parser.prog == f"python -m {name}", name
        for action in parser._actions:
            typed = action.type is not None and action.type is not str
            if action.option_strings and (typed or action.choices) and domain_of(parser.prog, action.dest) is None:
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, f"flags without a domain in configs/flags.py: {missing}"


def test_every_entry_point_parses_with_flag_parser():
    """A new command cannot slip past the rule: outside broker/ (which imports nothing of ours) every
    parser is a FlagParser, and every module that builds one is in PARSERS above or has no typed flag."""
    plain = [
        str(path.relative_to(ROOT))
        for folder in ("server", "streamer", "train", "configs", "bench", "results")
        for path in (ROOT / folder).rglob("*.py")
        if "argparse.ArgumentParser(" in path.read_text()
    ]
    assert plain == [], f"use configs.flags.FlagParser: {plain}"
    untyped = {"bench/naive_server.py"}  # --topic-suffix and --model only
    builders = {
        str(path.relative_to(ROOT))
        for folder in ("server", "streamer", "train", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if "FlagParser(" in path.read_text()
    }
    listed = set()
    for name in PARSERS:  # python -m a.b runs a/b.py, or a/b/__main__.py for a package
        module = name.replace(".", "/")
        listed.add(f"{module}.py" if (ROOT / f"{module}.py").is_file() else f"{module}/__main__.py")
    assert builders - untyped <= listed, builders - untyped - listed


def test_every_training_config_key_has_a_domain_or_is_free_text():
    keys = set()
    for key, value in load_config(None, "default.py").to_dict().items():
        keys |= {f"{key}.{sub}" for sub in value} if isinstance(value, dict) else {key}
    assert keys == set(TRAIN_CONFIG) | set(TRAIN_TEXT)


@pytest.mark.parametrize("name", ["default", "quick", "smoke"])
def test_shipped_training_configs_are_inside_their_domains(name):
    assert config_problems(load_config(ROOT / "configs" / f"{name}.py", "default.py")) == []


def test_streaming_defaults_are_inside_their_domains():
    config = load_config(None, "stream.py")
    for dest, domain in FLAGS.items():
        if "." in dest:
            section, key = dest.split(".")
            assert domain.allows(config[section][key]), dest


def test_limit_zero_still_means_the_whole_test_set():
    for name, flag in (("streamer", "--limit"), ("train.evaluate", "--limit")):
        args, code, _ = parse(name, [flag, "0"])
        assert code is None and vars(args)["streamer.limit" if name == "streamer" else "limit"] == 0


# -------------------------------------------------- domains, generated values
def finite(domain: Numbers):
    if domain.whole:
        return st.integers(
            None if domain.low is None else math.ceil(domain.low), None if domain.high is None else int(domain.high)
        )
    return st.floats(domain.low, domain.high, allow_nan=False, allow_infinity=False)


@given(st.sampled_from(ALL_DOMAINS), st.data())
def test_numbers_domains_allow_exactly_their_range(item, data):
    _, domain = item
    if not isinstance(domain, Numbers):
        return
    inside = data.draw(finite(domain))
    on_bound = (domain.above and inside == domain.low) or (domain.below and inside == domain.high)
    assert domain.allows(inside) is not on_bound
    if domain.low is not None:
        assert not domain.allows(data.draw(st.floats(max_value=domain.low, exclude_max=not domain.above)))
    if domain.high is not None:
        assert not domain.allows(data.draw(st.floats(min_value=domain.high, exclude_min=not domain.below)))
    for bad in (math.nan, math.inf, -math.inf, True, False, "1", None):
        assert not domain.allows(bad), bad
    if domain.whole:
        assert not domain.allows(data.draw(st.floats().filter(lambda x: math.isfinite(x) and not x.is_integer())))


@given(st.sampled_from([(k, d) for k, d in ALL_DOMAINS if isinstance(d, OneOf)]), st.data())
def test_enumerated_domains_allow_their_values_only(item, data):
    _, domain = item
    assert all(domain.allows(v) for v in domain.values)
    other = data.draw(st.one_of(st.text(), st.integers(), st.floats(), st.booleans()))
    same = any(other == v and type(other) is type(v) for v in domain.values)
    if domain.fold_case and isinstance(other, str):
        same = other.upper() in {str(v).upper() for v in domain.values}
    assert domain.allows(other) is same


@given(st.lists(st.integers(-10, 2000), max_size=5))
def test_image_shape_domain(shape):
    domain = TRAIN_CONFIG["image_shape"]
    assert isinstance(domain, Items)
    ok = len(shape) == 3 and 4 <= shape[0] <= 1024 and 4 <= shape[1] <= 1024 and shape[2] in (1, 3)
    assert domain.allows(tuple(shape)) is ok


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers())
@example(5000.0)
@example(0.5)
@example(0.7)
@example(1.5)
def test_validation_size_is_a_count_or_a_fraction_up_to_half(value):
    domain = TRAIN_CONFIG["validation_size"]
    assert isinstance(domain, Either)
    ok = math.isfinite(value) and ((value >= 1 and float(value).is_integer()) or 0 < value <= 0.5)
    assert domain.allows(value) is ok


# ---------------------------------------- every entry point, generated values
def out_of_domain(domain: Numbers):
    options = [st.sampled_from(["nan", "inf", "-inf"])] if not domain.whole else []
    if domain.low is not None:
        below = st.integers(max_value=math.ceil(domain.low) - 1) if domain.whole else st.floats(max_value=domain.low)
        options.append(below.filter(lambda v: not domain.allows(v)).map(str))
    if domain.high is not None:
        above = st.integers(min_value=int(domain.high) + 1) if domain.whole else st.floats(min_value=domain.high)
        options.append(above.filter(lambda v: not domain.allows(v)).map(str))
    return st.one_of(options)


@settings(max_examples=200, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.sampled_from(NUMERIC), st.data())
def test_a_value_outside_its_domain_is_one_line_and_exit_2(flag, data):
    name, option, _, domain = flag
    text = data.draw(out_of_domain(domain))
    args, code, err = parse(name, [f"{option}={text}"])
    assert code == 2 and args is None
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"python -m {name}: error: ")
    assert option in lines[0] and str(domain) in lines[0]


@settings(max_examples=200)
@given(st.sampled_from(NUMERIC), st.data())
def test_a_value_inside_its_domain_parses_to_itself(flag, data):
    name, option, dest, domain = flag
    value = data.draw(finite(domain).filter(domain.allows))
    args, code, err = parse(name, [f"{option}={value!r}"])
    assert code is None, err
    parsed = getattr(args, dest)
    assert (parsed[0] if isinstance(parsed, list) else parsed) == value


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(sorted(k for k, d in TRAIN_CONFIG.items() if isinstance(d, Numbers))),
    st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans()),
)
def test_train_overrides_outside_their_domains_stop_before_training(key, value):
    import train.__main__

    domain = TRAIN_CONFIG[key]
    if domain.allows(value):
        assert train.__main__.override_problem(key, value) is None
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        train.__main__.main(["--workdir", "/nonexistent/never-written", f"--config.{key}={value!r}"])
    assert exit_.value.code == 2
    assert err.getvalue().splitlines() == [
        f"python -m train: error: --config.{key}={value!r} is not allowed: use {domain}"
    ]


def test_a_bad_value_in_a_config_file_is_named_as_such(tmp_path):
    import train.__main__

    config = tmp_path / "mine.py"
    config.write_text(
        "from configs import default\n\ndef get_config():\n    c = default.get_config()\n    c.batch_size = 0\n    return c\n"
    )
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        train.__main__.main(["--config", str(config)])
    assert exit_.value.code == 2
    assert err.getvalue().splitlines() == [
        f"python -m train: error: batch_size = 0 is not allowed in {config}: use {TRAIN_CONFIG['batch_size']}"
    ]


# ------------------------------------------------- the real commands, end to end
BAD = [
    (["streamer", "--rate", "-5"], "--rate"),
    (["streamer", "--limit", "-3"], "--limit"),
    (["streamer", "--replicas", "0"], "--replicas"),
    (["streamer", "--streams", "0"], "--streams"),
    (["streamer", "--timeout", "-1"], "--timeout"),
    (["server", "--max-batch-size", "0"], "--max-batch-size"),
    (["train", "--config.num_epochs=0"], "--config.num_epochs"),
    (["train.evaluate", "--limit", "-1"], "--limit"),
    (["train.predict", "x.png", "--top-k", "0"], "--top-k"),
    (["bench", "--repeats", "0"], "--repeats"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(argv) for argv, _ in BAD])
def test_bad_flag_end_to_end_stops_before_jax_and_the_broker(argv, flag):
    """The real command: exit 2, one line naming the flag, and neither JAX nor the Pub/Sub client imported
    (-X importtime lists every module the process imported), so no emulator, server or training started."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    said = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(said) == 1 and said[0].startswith(f"python -m {argv[0]}: error: {flag}"), said
    assert " is not allowed: use " in said[0]
    heavy = [
        m for m in imported if m.split(".")[0] in ("jax", "flax", "orbax") or m.startswith(("google.cloud", "broker"))
    ]
    assert not heavy, heavy[:5]


def test_the_shipped_stream_config_is_within_its_domains():
    from configs.flags import STREAM_CONFIG

    assert config_problems(load_config(None, "stream.py"), domains=STREAM_CONFIG) == []


@pytest.mark.parametrize("program", ["streamer", "server"])
@pytest.mark.parametrize(
    "key, value",
    [("streamer.publish_interval_ms", -1.0), ("streamer.publish_retry_s", 0.0), ("server.publish_max_messages", 1001)],
)
def test_a_config_files_bad_value_stops_before_the_broker(program, key, value, tmp_path):
    from tests.conftest import stream_config_file

    path = stream_config_file(tmp_path / "bad.py", {key: value})
    proc = subprocess.run(
        [sys.executable, "-m", program, "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key} = {value!r} is not allowed in {path}"), proc.stderr
