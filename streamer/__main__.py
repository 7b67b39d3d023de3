"""python -m streamer [--rate R] [--streams K] [--limit N] [--replicas N] [--server managed|external] ...
python -m streamer --index N | --image FILE      (one image through the broker)
python -m streamer --collect-only --run-id ID --state-file F [--limit N] [--server external]
                                                 (resume collecting a run whose streamer died)
python -m streamer report [DIR]                  (show the latest, or the named, report again)
python -m streamer report --diff RUN_A RUN_B     (compare two saved runs: accuracy, per class, latency, models)
python -m streamer --dataset folder:DIR --model M [--content-type png]   (your model on your test set)
python -m streamer --compare OTHER_MODEL         (two models, the same requests, McNemar's test)
python -m streamer --plan-delta POINTS [--plan-accuracy PERCENT] [--plan-disagreement PERCENT]
                                                 (images needed to detect a difference; nothing is started)
python -m streamer --corruptions all|NAME,NAME [--severities 1-5] [--per-cell N] [--seed S]
                                                 (the clean images and their corrupted variants: robustness)
python -m streamer --slices FILE.csv             (figures per slice of per-image metadata)
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from configs import config_flag_metavars
from configs.flags import FlagParser, stream_config_problem


def make_parser() -> FlagParser:
    """The streamer's flags; each numeric or enumerated one has its domain in configs/flags.py."""
    p = FlagParser(prog="python -m streamer", description="Stream Fashion-MNIST through Pub/Sub and report.")
    p.add_argument("--config", help="config file (default configs/stream.py)")
    p.add_argument(
        "--rate", type=float, dest="streamer.rate", help="images per second; 0 = as fast as possible (default 200)"
    )
    p.add_argument("--streams", type=int, dest="streamer.streams", help="ordering keys: image i goes on stream i %% K")
    p.add_argument("--limit", type=int, dest="streamer.limit", help="only the first N test images")
    p.add_argument("--content-type", dest="streamer.content_type", help="send raw pixels or PNG files")
    p.add_argument("--server", default="managed", dest="server_mode", help="start the server, or use a running one")
    p.add_argument("--replicas", type=int, dest="server.replicas", help="managed server replicas")
    p.add_argument("--project", dest="broker.project", help="real GCP project (default: the emulator)")
    p.add_argument("--model", dest="model_dir", help="model directory for the managed server and the offline check")
    p.add_argument("--topic-suffix", default="", help="suffix on every topic/subscription name")
    p.add_argument(
        "--timeout",
        type=float,
        dest="collector.timeout_s",
        help="seconds without a new result before giving up (default 120; at most 30 once all are published)",
    )
    p.add_argument("--reports-dir", dest="collector.reports_dir", help="where reports/<timestamp>/ go")
    p.add_argument(
        "--state-file", dest="collector.state_file", help="persist collector progress here (resumable collector)"
    )
    p.add_argument("--run-id", help="request-id prefix (resume a collector with the same run id)")
    p.add_argument(
        "--collect-only",
        action="store_true",
        help="publish nothing: collect the results of run --run-id (resuming from --state-file) and report",
    )
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the offline comparison")
    p.add_argument(
        "--dataset",
        dest="streamer.dataset",
        help="fashion_mnist (default), idx:IMAGES,LABELS or folder:DIR: the labelled test images to stream",
    )
    p.add_argument("--compare", help="a second model folder: served on its own subscription of the same requests")
    p.add_argument("--index", type=int, help="send test image N and print its prediction")
    p.add_argument("--image", help="send this PNG/JPEG and print its prediction")
    p.add_argument(
        "--warm-up",
        type=int,
        dest="warm_up",
        help="exactly N warm-up requests on a fresh emulator (default: in proportion to the run, configs/stream.py)",
    )
    _confidence_level(p)
    p.add_argument(
        "--plan-delta",
        type=float,
        dest="plan_delta",
        metavar="POINTS",
        help="print the images needed to detect an accuracy difference of POINTS percentage points and exit "
        "(nothing is started)",
    )
    p.add_argument(
        "--plan-accuracy",
        type=float,
        dest="plan_accuracy",
        metavar="PERCENT",
        help="--plan-delta's baseline accuracy (default: the model's test accuracy in its metadata.json)",
    )
    p.add_argument(
        "--plan-disagreement",
        type=float,
        dest="plan_disagreement",
        metavar="PERCENT",
        help="--plan-delta's share of images two models answer differently, one right and one wrong "
        "(default: 100 - baseline accuracy + POINTS)",
    )
    robust = p.add_argument_group("robustness (defaults: configs/robustness.py; docs/robustness.md)")
    robust.add_argument("--corruptions", help="all, or comma-separated names: stream every corruption x severity too")
    robust.add_argument("--severities", help="e.g. 1-5, 3 or 1,3,5 (default 1-5)")
    robust.add_argument("--per-cell", type=int, help="source images per corruption x severity cell (default 500)")
    robust.add_argument("--seed", type=int, help="picks the source images and seeds the corruptions (default 0)")
    p.add_argument(
        "--slices", help="CSV mapping each test image (index, or file for folders) to slice columns: per-slice figures"
    )
    return config_flag_metavars(p)


def _confidence_level(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--confidence-level",
        type=float,
        dest="intervals.level",
        metavar="LEVEL",
        help="two-sided level of every interval, e.g. 0.99; the tests are at 1 - LEVEL (default: configs/stream.py)",
    )


def parse_args(argv=None) -> argparse.Namespace:
    """Parsed and checked: a value outside its domain exits 2 here, before anything is imported or started."""
    p = make_parser()
    args = p.parse_args(argv)
    if (problem := plan_problem(args)) is not None:
        p.error(problem)
    return args


def plan_problem(args: argparse.Namespace) -> str | None:
    """What the --plan-* flags' domains (configs/flags.py) cannot say: they go together, and a difference needs at
    least as many disagreements. None when they fit."""
    delta, disagreement = args.plan_delta, args.plan_disagreement
    if delta is None:
        for flag, value in (("--plan-accuracy", args.plan_accuracy), ("--plan-disagreement", disagreement)):
            if value is not None:
                return f"{flag} needs --plan-delta POINTS"
        return None
    if disagreement is not None and disagreement < delta:
        return (
            f"--plan-disagreement {disagreement:g} is below --plan-delta {delta:g}: a difference is made of images "
            "one model gets right and the other wrong, so they disagree on at least that many"
        )
    return None


def plan(args: argparse.Namespace) -> int:
    """--plan-delta: the images needed, printed; the baseline from --plan-accuracy or the model's metadata.json."""
    from results.compare import plan as plan_lines
    from results.metrics import Uncertainty
    from streamer.options import resolve

    config, _ = resolve(args)
    u = Uncertainty(**config.intervals)
    if args.plan_accuracy is not None:
        baseline, source = args.plan_accuracy / 100, "--plan-accuracy"
    else:
        from train.checkpoint import DEFAULT_MODEL_DIR, ModelError, load_metadata

        model_dir = Path(config.model_dir or DEFAULT_MODEL_DIR)
        try:
            baseline, source = float(load_metadata(model_dir)["test_accuracy"]), f"{model_dir}/metadata.json"
        except (ModelError, KeyError, TypeError, ValueError) as err:
            print(f"error: {err if isinstance(err, ModelError) else f'{model_dir}/metadata.json has no test_accuracy'}"
                  "; or give --plan-accuracy PERCENT", file=sys.stderr)  # fmt: skip
            return 2
    disagreement = None if args.plan_disagreement is None else args.plan_disagreement / 100
    try:
        print("\n".join(plan_lines(args.plan_delta / 100, baseline, disagreement, u.alpha, u.power, source)))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def make_report_parser() -> FlagParser:
    """`report [DIR] | --diff RUN_A RUN_B`, with --confidence-level: checked like the run's flags."""
    p = FlagParser(
        prog="python -m streamer report", description="Show a saved report again, or compare two saved runs."
    )
    p.add_argument("path", nargs="?", help="a report folder or its report.json (default: the newest under reports/)")
    p.add_argument("--diff", nargs=2, metavar=("RUN_A", "RUN_B"), help="compare two saved runs")
    _confidence_level(p)
    return p


def parse_report_args(argv: list[str]) -> argparse.Namespace:
    p = make_report_parser()
    args = p.parse_args(argv)
    if args.diff and args.path:
        p.error("give a report folder or --diff RUN_A RUN_B, not both")
    return args


def check_flags(args: argparse.Namespace) -> str | None:
    """The robustness and slice flags, parsed and checked before anything starts (JAX, the broker, a server):
    None when they are fine (their values are then on args), else the one line that says what is wrong.

    Their parsers are imported only when their flags are given: with SciPy they cost ~1 s of a start.
    """
    args.robustness = args.slice_table = None
    given = [
        f"--{name.replace('_', '-')}" for name in ("severities", "per_cell", "seed") if getattr(args, name) is not None
    ]
    if args.corruptions is None and given:
        return f"{', '.join(given)}: for a robustness run only; add --corruptions all|NAME,NAME"
    single = args.index is not None or args.image
    if single and (args.corruptions is not None or args.slices):
        return "--corruptions and --slices are for a run over a test set, not with --index or --image"
    if args.corruptions is not None:
        from configs import load_config
        from train.corruptions import parse_corruptions, parse_severities

        config = load_config(None, "robustness.py")

        try:
            corruptions = parse_corruptions(args.corruptions)
        except ValueError as err:
            return f"--corruptions {args.corruptions!r}: {err}"
        try:
            severities = parse_severities(args.severities if args.severities is not None else config.severities)
        except ValueError as err:
            return f"--{err}"
        # --per-cell and --seed: their domains (configs/flags.py) were checked as they were parsed
        per_cell = args.per_cell if args.per_cell is not None else config.per_cell
        seed = args.seed if args.seed is not None else config.seed
        args.robustness = {"corruptions": corruptions, "severities": severities, "per_cell": per_cell, "seed": seed}
    if args.slices:
        from results.slices import SliceError, read_slices

        try:
            args.slice_table = read_slices(args.slices)
        except SliceError as err:
            return str(err)
        folder = (getattr(args, "streamer.dataset", None) or "").startswith("folder:")
        key = args.slice_table.key
        if (folder and key == "index") or (not folder and key == "file"):
            wanted = "file" if folder else "index"
            return f"--slices {args.slices}: this dataset's images are named by '{wanted}' (or 'image'), not '{key}'"
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        args = parse_report_args(argv[1:])
        from results.run import ReportError
        from streamer.report import diff_reports, interval_settings, show_report

        settings = interval_settings(level=getattr(args, "intervals.level"))
        try:
            if args.diff:
                print(diff_reports(*args.diff, uncertainty=settings)[0])
            else:
                print(show_report(args.path, uncertainty=settings))
        except (FileNotFoundError, ReportError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    args = parse_args(argv)  # checked before streamer.run, and with it JAX and the broker client, is imported
    if (problem := check_flags(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.plan_delta is not None:
        return plan(args)
    from streamer.options import resolve

    try:
        config, options = resolve(args)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # A config file's value outside its domain: one line, before JAX and the broker client load (~2 s).
    if problem := stream_config_problem(config, args.config):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from streamer.run import main as run_main

    return run_main(config, options)


if __name__ == "__main__":
    code = main()
    # Everything it started has stopped and the report is written: what is left is the interpreter
    # tearing down XLA's and gRPC's native threads, ~1 s of waiting after the verdict line.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
