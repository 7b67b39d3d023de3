"""The allowed values of every numeric or enumerated flag, in one place, checked before anything starts.

Every entry point parses its flags with `FlagParser`, which checks each value against `FLAGS` right
after parsing: before JAX is imported (about 3 s here), before an emulator, a server or a training
run starts. A value outside its domain is one line naming the flag and what it allows, and exit
status 2. `python -m train` checks its `--config.KEY=VALUE` overrides (and the config file's own
values) against `TRAIN_CONFIG` the same way; `python -m streamer` and `python -m server` check the
configs/stream.py keys that no flag sets against `STREAM_CONFIG`, before any broker work.

A new flag of type int or float, or with a fixed set of values, needs its line here:
tests/test_flags.py fails for a flag without one. Bounds are what the code can run with, not what
is sensible; where a bound is a choice, the comment says why.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class Domain(Protocol):
    def allows(self, value: Any) -> bool: ...

    def __str__(self) -> str: ...


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Numbers:
    """Finite numbers from `low` to `high` (None: no bound); `whole` ones only if whole=True.

    `above`/`below` exclude the bound itself. `note` says what a special value means.
    """

    low: float | None = None
    high: float | None = None
    whole: bool = False
    above: bool = False
    below: bool = False
    note: str = ""

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.whole and not float(value).is_integer()):
            return False
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or (value < self.high if self.below else value <= self.high)

    def __str__(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        lo, hi = self.low, self.high
        if lo is not None and hi is not None and not self.above and not self.below:
            text = f"{kind} from {_num(lo)} to {_num(hi)}"
        else:
            parts = []
            if lo is not None:
                parts.append(f"{'>' if self.above else '>='} {_num(lo)}")
            if hi is not None:
                parts.append(f"{'<' if self.below else '<='} {_num(hi)}")
            text = f"{kind} {' and '.join(parts)}".rstrip()
        return f"{text} ({self.note})" if self.note else text


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values (case-insensitive for strings when fold_case=True)."""

    values: tuple
    fold_case: bool = False

    def allows(self, value: Any) -> bool:
        if self.fold_case and isinstance(value, str):
            return value.upper() in {str(v).upper() for v in self.values}
        return any(value == v and type(value) is type(v) for v in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values)


@dataclass(frozen=True)
class Either:
    """Any value one of `options` allows."""

    options: tuple

    def allows(self, value: Any) -> bool:
        return any(option.allows(value) for option in self.options)

    def __str__(self) -> str:
        return " or ".join(str(option) for option in self.options)


@dataclass(frozen=True)
class Items:
    """A tuple or list: `each` for every item, or one domain per position; its length within `lengths`."""

    each: Any
    lengths: tuple[int, int]
    text: str

    def allows(self, value: Any) -> bool:
        if not isinstance(value, (tuple, list)) or not self.lengths[0] <= len(value) <= self.lengths[1]:
            return False
        domains = self.each if isinstance(self.each, tuple) else (self.each,) * len(value)
        return len(domains) == len(value) and all(d.allows(v) for d, v in zip(domains, value))

    def __str__(self) -> str:
        return self.text


FRACTION = Numbers(0, 1, below=True)  # a probability that must leave something: [0, 1)
SECONDS = Numbers(0, 86_400, above=True)  # more than nothing, at most a day
PORT = Numbers(0, 65_535, whole=True, note="0 = none")
# Each replica is a process with its own JAX runtime and model (~300 MB); more than 64 on one machine
# is a typing error, not a deployment (docs/capacity.md spreads 100k img/s over machines).
REPLICAS = Numbers(1, 64, whole=True)

BENCH_SCENARIOS = (
    "model", "echo", "ungrouped", "naive", "server", "replicas", "pinned", "drain", "capacity", "sweep", "streams", "coldstart",
)  # fmt: skip

# Every numeric or enumerated flag of every entry point, by its argparse dest. A dest with a dot is a
# configs/stream.py key (the flag overrides it); the others belong to their entry point alone.
FLAGS: dict[str, Domain] = {
    # python -m streamer, python -m server
    "streamer.rate": Numbers(0, 1_000_000, note="images per second; 0 = as fast as possible"),
    # image i goes on ordering key i % K: K >= 1; more keys than images changes nothing
    "streamer.streams": Numbers(1, 1_000_000, whole=True),
    "streamer.limit": Numbers(0, whole=True, note="0 = the whole test set"),
    "streamer.content_type": OneOf(("raw", "png")),
    "warm_up": Numbers(0, 1_000_000, whole=True, note="requests; 0 = none"),
    "server_mode": OneOf(("managed", "external")),
    "server.replicas": REPLICAS,
    "collector.timeout_s": SECONDS,
    "index": Numbers(0, whole=True),
    # at most max_outstanding (4,096) messages are held, so no batch can be larger
    "server.max_batch_size": Numbers(1, 4096, whole=True),
    # a wait beyond a second is latency for nothing: the ack deadline is 10 s
    "server.max_wait_ms": Numbers(0, 1000),
    "server.metrics_port": PORT,
    "server.batching": OneOf(("adaptive", "fixed")),
    # milliseconds; past the ack deadline (10 s) a request the server holds is redelivered, so an
    # objective beyond it is not one the server can keep
    "server.latency_slo_ms": Numbers(0, 10_000, above=True),
    "log_level": OneOf(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), fold_case=True),
    # python -m streamer and its `report`: every interval's level. Below 0.5 an interval misses more often
    # than it covers; above 0.999 a 1,000-resample bootstrap's bounds are its most extreme resamples.
    "intervals.level": Numbers(0.5, 0.999),
    # python -m streamer --plan-*: percentage points and percents; a difference of 0 needs infinitely many images
    "plan_delta": Numbers(0, 100, above=True, note="percentage points"),
    "plan_accuracy": Numbers(0, 100, note="percent"),
    "plan_disagreement": Numbers(0, 100, above=True, note="percent of images"),
    # python -m train.evaluate, python -m train.predict
    "limit": Numbers(0, whole=True, note="0 = the whole test set"),
    # python -m streamer and python -m train.evaluate with --corruptions (defaults: configs/robustness.py).
    # More source images than the dataset has takes them all. --corruptions and --severities are text,
    # checked by train/corruptions.py's parsers before JAX loads (streamer/__main__.py check_flags,
    # train/evaluate.py _robustness_settings), as is --slices FILE.csv (results/slices.py read_slices).
    "per_cell": Numbers(1, whole=True, note="source images per corruption x severity cell"),
    "seed": Numbers(0, whole=True, note="picks the source images and seeds the corruptions"),
    "top_k": Numbers(1, 1000, whole=True),
    # make bench (python -m bench), python -m bench.models
    "repeats": Numbers(1, 100, whole=True),
    "only": OneOf(BENCH_SCENARIOS),
    "sizes": Numbers(1, 4096, whole=True),
    "rounds": Numbers(1, 100, whole=True),
    "seconds": Numbers(0, 600, above=True),
    "steps": Numbers(20, 100_000, whole=True),  # python -m bench.train_steps: at least one chunk of 20
}

# Where one program's flag means something else than the same dest in FLAGS: by the parser's prog.
PROGRAM_FLAGS: dict[str, dict[str, Domain]] = {
    "python -m bench.stages": {
        "rates": Numbers(0, 1_000_000, note="img/s, comma-separated; 0 = as fast as possible"),
        "policies": OneOf(("fixed", "adaptive")),
        "limit": Numbers(1, 10_000, whole=True),  # images per timed run, from the 10,000-image test set
        "streams": Numbers(1, 10_000, whole=True),
        "repeats": Numbers(1, 20, whole=True),
        "warm_up": Numbers(0, 10_000, whole=True),
    },
}


def domain_of(prog: str, dest: str) -> Domain | None:
    """The domain of flag `dest` in program `prog`: its own in PROGRAM_FLAGS, else FLAGS's."""
    return PROGRAM_FLAGS.get(prog, {}).get(dest) or FLAGS.get(dest)


def comma_list(kind: type) -> Callable[[str], list]:
    """An argparse type for "0,150,800": a list of `kind`, each item checked against the flag's domain."""

    def parse(text: str) -> list:
        return [kind(item) for item in text.split(",")]

    parse.__name__ = f"comma-separated {kind.__name__}"  # argparse's "invalid <name> value" message
    return parse


# configs/default.py's keys: what `python -m train --config.KEY=VALUE` and a config file may set.
IMAGE_SIDE = Numbers(4, 1024, whole=True)  # two 2x2 poolings need 4 pixels; 1,024 is far beyond CPU training
# configs/stream.py keys that no flag sets, only a config file: `python -m streamer` and `python -m server` check
# them as they check flags, before anything starts.
STREAM_CONFIG: dict[str, Domain] = {
    # a Publish call per due batch at most this often; past a second a paced run would send in bursts
    "streamer.publish_interval_ms": Numbers(0, 1000, note="0 = a call per due batch"),
    "streamer.publish_retry_s": Numbers(0, 600, above=True),
    "collector.give_up_s": Numbers(0, 600, above=True),
    "server.publish_max_messages": Numbers(1, 1000, whole=True, note="Pub/Sub's limit per Publish request"),
}

TRAIN_CONFIG: dict[str, Domain] = {
    "seed": Numbers(0, 2**31 - 1, whole=True),
    "dataset": OneOf(("fashion_mnist", "idx", "folder")),
    "test_fraction": Numbers(0, 0.5, above=True),
    "image_shape": Items(
        (IMAGE_SIDE, IMAGE_SIDE, OneOf((1, 3))), (3, 3), "(height, width, channels): sides 4 to 1,024, 1 or 3 channels"
    ),
    # a count of images, or a fraction of the training split; more than half leaves too little to train on
    "validation_size": Either((Numbers(1, whole=True), Numbers(0, 0.5, above=True))),
    "train_limit": Numbers(0, whole=True, note="0 = all"),
    "test_limit": Numbers(0, whole=True, note="0 = all"),
    "model.widths": Items(Numbers(1, 1024, whole=True), (1, 8), "1 to 8 whole numbers from 1 to 1,024"),
    "model.convs_per_block": Numbers(1, 8, whole=True),
    "model.dense": Numbers(1, 8192, whole=True),
    "model.dropout_conv": FRACTION,
    "model.dropout_dense": FRACTION,
    "num_epochs": Numbers(1, 10_000, whole=True),
    "batch_size": Numbers(1, 8192, whole=True),
    "eval_batch_size": Numbers(1, 65_536, whole=True),
    "learning_rate": Numbers(0, 10, above=True),
    "warmup_fraction": Numbers(0, 1, above=True, below=True),  # the one-cycle schedule needs a rise and a fall
    "weight_decay": Numbers(0, 1),
    "label_smoothing": FRACTION,
    "ema_decay": FRACTION,
    "test_time_flip": OneOf((True, False)),
    "augment.crop_pad": Numbers(0, 64, whole=True),
    "augment.hflip": OneOf((True, False)),
    "augment.erase_prob": Numbers(0, 1),
    "augment.erase_max_frac": Numbers(0, 1, above=True),
}
# configs/default.py's free-text keys: names and paths, checked where they are used.
TRAIN_TEXT = (
    "name",
    "images_path",
    "labels_path",
    "test_images_path",
    "test_labels_path",
    "image_dir",
    "test_image_dir",
    "class_names",
)


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def problem(name: str, value: Any, domain: Domain, sep: str = " ", where: str = "") -> str | None:
    """None if `domain` allows `value` (each item of a list flag), else one line: the flag, the value, what is allowed."""
    values = value if isinstance(value, list) and not isinstance(domain, Items) else [value]
    for v in values:
        if not domain.allows(v):
            return f"{name}{sep}{_shown(v)} is not allowed{where}: use {domain}"
    return None


def flag_problems(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> list[str]:
    """One line per parsed flag whose value is outside its domain (unset flags are not checked)."""
    out = []
    for action in parser._actions:
        domain = domain_of(parser.prog, action.dest)
        value = getattr(namespace, action.dest, None)
        if domain is None or value is None or not action.option_strings:
            continue
        if (line := problem(action.option_strings[0], value, domain)) is not None:
            out.append(line)
    return out


def config_problems(
    config: Mapping,
    overrides: Iterable[str] = (),
    source: str = "the config file",
    domains: Mapping[str, Domain] | None = None,
) -> list[str]:
    """One line per `domains` key (TRAIN_CONFIG's by default) of `config` outside its domain, named as the flag
    that set it if one did."""
    out = []
    overridden = set(overrides)
    for key, domain in (TRAIN_CONFIG if domains is None else domains).items():
        section, *rest = key.split(".")
        value = config[section][rest[0]] if rest else config[section]
        named = (f"--config.{key}", "=", "") if key in overridden else (key, " = ", f" in {source}")
        if (line := problem(named[0], value, domain, *named[1:])) is not None:
            out.append(line)
    return out


def stream_config_problem(config: Mapping, path: str | None) -> str | None:
    """The first STREAM_CONFIG key of a stream config (`path`, else configs/stream.py) outside its domain."""
    problems = config_problems(config, source=path or "configs/stream.py", domains=STREAM_CONFIG)
    return problems[0] if problems else None


class FlagParser(argparse.ArgumentParser):
    """argparse with one-line errors, and every flag checked against its domain as soon as it is parsed.

    A flag with a fixed set of values shows them in --help ({raw,png}).
    """

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        domain = domain_of(self.prog, action.dest)
        if isinstance(domain, OneOf) and action.metavar is None and action.option_strings:
            action.metavar = "{" + ",".join(str(v) for v in domain.values) + "}"
        return action

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        if problems := flag_problems(self, namespace):
            self.error(problems[0])
        return namespace, rest

    def error(self, message: str):
        """One line and exit 2: `prog: error: ...` (the usage is in --help)."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")
