"""The streamer's flags, resolved once: into the config, or into RunOptions, never both.

The rule: a flag is a run option when RunOptions has a field of its dest's name; every other flag names a config key
("streamer.rate", "model_dir") and goes into the config (configs.override refuses a key the config lacks). Below
this file only the config and a RunOptions travel; the parsed flags stay here and in __main__.py.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

import ml_collections

from configs import load_config, override

if TYPE_CHECKING:
    from results.slices import SliceTable

# Flags __main__.py uses up before a run: --plan-* end in a printout, and --corruptions, --severities, --per-cell,
# --seed and --slices are checked and turned into RunOptions.robustness and RunOptions.slice_table.
USED_BEFORE_THE_RUN = ("plan_delta", "plan_accuracy", "plan_disagreement")
TURNED_INTO_OPTIONS = ("corruptions", "severities", "per_cell", "seed", "slices")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What one `python -m streamer` is asked to do beyond its config (which holds every default)."""

    config: str | None = None  # the config file, passed on to the managed server
    server_mode: str = "managed"  # managed: the run starts its server(s); external: one is running
    topic_suffix: str = ""
    run_id: str | None = None
    collect_only: bool = False
    verify: bool = True
    compare: str | None = None  # a second model folder
    warm_up: int | None = None  # exactly this many warm-up requests (None: in proportion, configs/stream.py)
    index: int | None = None  # one test image through the broker ...
    image: str | None = None  # ... or one picture file
    robustness: dict | None = None  # --corruptions .. --seed, checked (streamer/__main__.py check_flags)
    slice_table: SliceTable | None = None  # --slices, read and checked

    @property
    def single(self) -> bool:
        """One image through the broker, not a run over a test set."""
        return self.index is not None or bool(self.image)


def resolve(args: argparse.Namespace) -> tuple[ml_collections.ConfigDict, RunOptions]:
    """The parsed (and checked) flags as (config, options): --config FILE (else configs/stream.py) with every
    config flag applied, and every run option."""
    values = vars(args)
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    options = RunOptions(**{name: values[name] for name in fields if name in values})
    skip = fields | set(USED_BEFORE_THE_RUN) | set(TURNED_INTO_OPTIONS)
    config = override(load_config(args.config, "stream.py"), {k: v for k, v in values.items() if k not in skip})
    return config, options
