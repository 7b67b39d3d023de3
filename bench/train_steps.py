"""How long a training config takes here, from a couple of hundred steps: python -m bench.train_steps CONFIG

    python -m bench.train_steps configs/default.py --steps 200
    XLA_FLAGS=--xla_cpu_max_isa=AVX2 python -m bench.train_steps configs/default.py --steps 200

Runs the config's own training step (train.train.train_epoch: augmentation, AdamW step, weight EMA)
on its own data for `--steps` steps, in chunks of 20, after one chunk that compiles; times one
validation pass the same way; and extrapolates to the whole run: steps per epoch x epochs at the
measured step time, plus one validation pass per epoch. Prints the step time's range over the chunks
and the extrapolated run time at both ends of it, and the CPU time per step (all threads), which
other processes on a shared machine inflate far less than the wall time. The configs' docstrings
quote these figures.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from configs import load_config
from configs.flags import FlagParser
from results.machine import describe, machine

CHUNK = 20  # steps per timed chunk: each ends in a device sync (train_epoch's last-step postfix)


def make_parser() -> FlagParser:
    parser = FlagParser(prog="python -m bench.train_steps", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a training config file, e.g. configs/default.py")
    parser.add_argument("--steps", type=int, default=200, help="timed steps (in chunks of 20)")
    return parser


def measure(config, steps: int) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from train import data as data_lib
    from train.model import build_model, make_predict_fn
    from train.splits import load_datasets
    from train.train import AVERAGED, eval_step, make_optimizer, train_epoch

    train_ds, val_ds, _ = load_datasets(config)
    steps_per_epoch = len(train_ds) // config.batch_size
    model = build_model(config.model.to_dict(), train_ds.images.shape[1:], len(train_ds.class_names), config.seed)
    optimizer = make_optimizer(model, config, steps_per_epoch)
    ema = nnx.state(model, AVERAGED)
    rng, key = np.random.default_rng(config.seed), jax.random.key(config.seed)
    chunk_ds = data_lib.take(train_ds, CHUNK * config.batch_size)
    chunks, cpu = [], []
    for i in range(1 + max(1, steps // CHUNK)):  # the first chunk compiles: not timed
        started, cpu_started = time.perf_counter(), time.process_time()
        _, ema, key = train_epoch(model, optimizer, ema, chunk_ds, config, 1, rng, key)
        if i:
            chunks.append((time.perf_counter() - started) / CHUNK)
            cpu.append((time.process_time() - cpu_started) / CHUNK)
    averaged = nnx.clone(model)
    nnx.update(averaged, ema)
    predict, _ = make_predict_fn(averaged, flip=config.test_time_flip)
    validations = []
    for _ in range(3):  # the first pass compiles
        started = time.perf_counter()
        eval_step(predict, nnx.state(averaged), val_ds, config.eval_batch_size)
        validations.append(time.perf_counter() - started)
    return {
        "step_s": chunks,
        "step_cpu_s": cpu,
        "validation_s": min(validations[1:]),
        "steps_per_epoch": steps_per_epoch,
        "epochs": config.num_epochs,
    }


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    config = load_config(args.config, "default.py")
    r = measure(config, args.steps)
    step, total_steps = r["step_s"], r["steps_per_epoch"] * r["epochs"]
    extra = r["validation_s"] * r["epochs"]
    low, mid, high = (t * total_steps + extra for t in (min(step), statistics.median(step), max(step)))
    print(f"{args.config}: {describe(machine())}; load average {os.getloadavg()[0]:.1f} at the end")
    print(
        f"  step {statistics.median(step):.3f} s (median of {len(step)} chunks of {CHUNK}; "
        f"{min(step):.3f}-{max(step):.3f}), validation pass {r['validation_s']:.2f} s; "
        f"CPU time per step {statistics.median(r['step_cpu_s']):.3f} s ({min(r['step_cpu_s']):.3f}-"
        f"{max(r['step_cpu_s']):.3f}; all threads: other processes inflate it far less than the wall time)"
    )
    print(
        f"  whole run, extrapolated: {r['epochs']} epochs x {r['steps_per_epoch']} steps = {total_steps:,} steps "
        f"-> {mid / 60:.1f} min ({low / 60:.1f}-{high / 60:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
