"""Offline evaluation of a saved model on the Fashion-MNIST test set (no broker).

    python -m train.evaluate [--model DIR] [--predictions FILE.csv] [--limit N]
    python -m train.evaluate --corruptions all|NAME,NAME [--severities 1-5] [--per-cell N]
                             [--reference DIR] [--plots DIR] [--json FILE]

Uses the same batch size as training's final evaluation, so its labels reproduce the ones
metadata.json records, image by image, and its float figures agree within the one tolerance of
results/agreement.py (the last float digits depend on the machine's instruction set). Its result
is a run result like a streamed run's (results/run.py), which the streamed report is compared
against, prediction by prediction; the predictions file holds one row per test image.

With --corruptions it is the robustness evaluation (docs/robustness.md): accuracy and
calibration per corruption x severity on a seeded subset of the test set, the paired drop
against the same images clean, and with --reference the Corruption Error against a
reference model. Its defaults live in configs/robustness.py. Flags are checked before JAX
is imported.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from configs import load_config
from configs.flags import FlagParser
from results import agreement, metrics
from results.run import Answers, Counters, ModelIdentity, RunInfo, RunResult, dataset_identity
from train.data import Dataset, DatasetError, load_fashion_mnist, take

# JAX, Flax and Orbax are imported inside the functions that need them: a bad flag is refused
# in a fraction of a second, before any of them loads.


def offline_result(probs: np.ndarray, data: Dataset, model: ModelIdentity | None = None) -> RunResult:
    """A local prediction of every image of `data` (probabilities from the one predict function), as a run result."""
    dataset, ids = dataset_identity(data)
    return RunResult(
        run=RunInfo(mode="offline", limit=len(data), dataset=data.name),
        model=model or ModelIdentity(None),
        dataset=dataset,
        class_names=tuple(data.class_names),
        answers=Answers.offline(ids, data.labels, probs),
        counters=Counters(sent=len(data)),
    )


def evaluate_model(model_dir: str | Path | None = None, limit: int | None = None, dataset=None) -> RunResult:
    """Every prediction of the model, with its confidence and probabilities, as a run result.

    The shipped model unless `model_dir` is given. On `dataset` (a train.data.Dataset) when
    given, else on Fashion-MNIST's test split; only its first `limit` images when a limit is given.
    """
    from train.checkpoint import DEFAULT_MODEL_DIR
    from train.predictor import load_predictor

    model_dir = model_dir or DEFAULT_MODEL_DIR
    predictor = load_predictor(model_dir)
    test = take(dataset if dataset is not None else load_fashion_mnist("test"), limit)
    identity = predictor.meta["checkpoint_sha256"][:16]
    return offline_result(
        predict_probs(predictor, test.images), test, ModelIdentity(identity, (identity,), str(model_dir))
    )


def write_predictions(path: str | Path, result: RunResult) -> None:
    """CSV: index,label,prediction,confidence (language-neutral, diffable)."""
    a = result.answers
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["index", "label", "prediction", "confidence"])
        for i, y, p, c in zip(a.index, a.label, a.prediction, a.confidence):
            out.writerow([int(i), int(y), int(p), f"{float(c):.6f}"])


def print_report(result: RunResult, meta: dict) -> None:
    n, accuracy = len(result.answers), metrics.accuracy(result)
    print(f"model {meta['checkpoint_sha256'][:12]}  test images {n}")
    for row in metrics.per_class(result):
        acc = row["accuracy"]
        print(
            f"  {row['class']:<12} {acc:7.2%}" if acc is not None else f"  {row['class']:<12}     n/a (no test images)"
        )
    print(f"accuracy {accuracy:.4%} ({int(round(accuracy * n))}/{n})")
    cal = metrics.calibration(result)
    print(
        f"calibration: ECE {cal['ece']:.2%} ({metrics.ECE_BINS} bins), max bin gap {cal['max_gap']:.2%}, "
        f"mean confidence {cal['mean_confidence']:.2%} vs accuracy {cal['accuracy']:.2%}, "
        f"NLL {cal['nll']:.4f}, Brier {cal['brier']:.4f}"
    )
    check = check_against_metadata(result, meta)
    if check is not None:
        print("matches metadata.json" if check.ok else f"DIFFERS from metadata.json: {check.describe()}")


def check_against_metadata(result: RunResult, meta: dict) -> agreement.Agreement | None:
    """The evaluation against what training recorded (metadata.json): labels identical, floats within
    results/agreement.py's tolerance.

    None when the result is not of the recorded test set (another size, or another dataset).
    Models trained before per-image predictions were recorded are checked on their figures only.
    """
    n, answers = len(result.answers), result.answers
    recorded = meta.get("test_predictions")
    if recorded is not None and recorded.get("n") == n:
        try:
            labels, confidences = agreement.decode_predictions(recorded)
        except ValueError as err:
            from train.checkpoint import ModelError

            raise ModelError(f"metadata.json: {err}") from None
        check = agreement.compare_predictions(labels, answers.prediction, confidences, answers.confidence)
        ece_allowed = agreement.ece_allowance(confidences, metrics.ECE_BINS)
    elif recorded is None and n == (meta.get("test_images") or 10000):
        # A crossing needs both confidences within the tolerance of the edge: either side can stand in.
        check = agreement.Agreement(n, [], 0.0, [])
        ece_allowed = agreement.ece_allowance(answers.confidence, metrics.ECE_BINS)
    else:
        return None
    recorded_calibration = meta.get("test_calibration", {}).get("after_scaling") or {}
    expected = {"accuracy": meta["test_accuracy"], **recorded_calibration}
    got = {"accuracy": metrics.accuracy(result), **metrics.calibration(result)}
    # Accuracy is a count of identical labels: any difference is a real one.
    allowed = {"accuracy": 0.0, "ece": ece_allowed, "mean_confidence": agreement.TOLERANCE}
    allowed |= {"nll": agreement.TOLERANCE, "brier": agreement.TOLERANCE}
    differences = agreement.compare_figures(expected, got, allowed)
    return dataclasses.replace(check, differences=check.differences + differences)


def predict_probs(predictor, images: np.ndarray, progress: bool = False, desc: str = "predicting") -> np.ndarray:
    """Class probabilities from the one predict function in the model's evaluation batch size.

    Whole chunks of ten batches go to predict_in_batches, so the batches (and the last one's padding) are
    the ones it makes for the whole array: the same bits with or without the progress bar.
    """
    from tqdm import tqdm

    from train.model import predict_in_batches

    batch = predictor.meta.get("eval_batch_size", 1000)
    if len(images) == 0:
        return predict_in_batches(predictor.predict, predictor.state, images, batch)
    chunk = 10 * batch
    out = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(images), chunk):
            out.append(predict_in_batches(predictor.predict, predictor.state, images[start : start + chunk], batch))
            bar.update(len(out[-1]))
    return np.concatenate(out)


# ------------------------------------------------------------------ robustness (--corruptions)
def evaluate_robustness(
    model_dir: str | Path | None = None,
    corruptions: tuple[str, ...] | None = None,
    severities: tuple[int, ...] | None = None,
    per_cell: int | None = None,
    seed: int | None = None,
    reference_dir: str | Path | None = None,
    dataset=None,
    limit: int | None = None,
    level: float | None = None,
    resamples: int | None = None,
    worst: int | None = None,
    progress: bool = True,
) -> dict:
    """Accuracy and calibration of the model per corruption x severity, on a seeded subset of `per_cell`
    source images (the same in every cell and in the clean cell), and its CE / mCE against `reference_dir`.

    An argument left at None takes configs/robustness.py's value (level and resamples: results/robustness.py's).
    Returns the CorruptedSet ("corrupted"), each model's Outcomes, figures (results.robustness) and metadata,
    the CE figures ("errors", or None) and the seconds spent generating and predicting.
    """
    from results.robustness import CLEAN, LEVEL, RESAMPLES, Outcomes, corruption_errors, robustness_figures
    from train.checkpoint import DEFAULT_MODEL_DIR
    from train.corruptions import CORRUPTIONS, corrupt_dataset, parse_corruptions, parse_severities
    from train.predictor import load_predictor

    config = load_config(None, "robustness.py")
    corruptions = tuple(corruptions) if corruptions is not None else parse_corruptions(config.corruptions)
    severities = tuple(severities) if severities is not None else parse_severities(config.severities)
    per_cell = per_cell if per_cell is not None else config.per_cell
    seed = seed if seed is not None else config.seed
    worst = worst if worst is not None else config.worst
    level = level if level is not None else LEVEL
    resamples = resamples if resamples is not None else RESAMPLES
    test = take(dataset if dataset is not None else load_fashion_mnist("test"), limit)
    corrupted = corrupt_dataset(test, corruptions, severities, per_cell, seed, progress)
    sources = corrupted.sources
    families = {name: CORRUPTIONS[name].family for name in corruptions}
    # The clean cell first, then the corrupted cells: the rows of the predictions CSV, in this order.
    rows = {
        "source": np.concatenate([sources, corrupted.source]),
        "corruption": np.concatenate([np.full(len(sources), CLEAN), corrupted.corruption]),
        "severity": np.concatenate([np.zeros(len(sources), np.int64), corrupted.severity]),
        "labels": np.concatenate([test.labels[sources], corrupted.labels]),
    }
    images = np.concatenate([test.images[sources], corrupted.images])

    def run(directory) -> dict:
        predictor = load_predictor(directory)
        start = time.perf_counter()
        probs = predict_probs(predictor, images, progress, f"predicting ({Path(directory).name})")
        seconds = time.perf_counter() - start
        outcomes = Outcomes.from_predictions(predictions=probs.argmax(-1), confidences=probs.max(-1), **rows)
        return {
            "dir": str(directory),
            "digest": predictor.meta["checkpoint_sha256"],
            "predictions": probs.argmax(-1),
            "confidences": probs.max(-1),
            "outcomes": outcomes,
            "figures": robustness_figures(outcomes, families, level, worst, resamples, seed),
            "predict_seconds": seconds,
        }

    model = run(model_dir or DEFAULT_MODEL_DIR)
    reference = run(reference_dir) if reference_dir else None
    errors = corruption_errors(model["outcomes"], reference["outcomes"], level, resamples, seed) if reference else None
    return {
        "dataset": test.name,
        "corruptions": corruptions,
        "severities": tuple(severities),
        "per_cell": len(sources),
        "seed": seed,
        "images": len(images),
        "rows": rows,
        "clean_images": test.images[sources],
        "corrupted": corrupted,
        "generation_seconds": corrupted.seconds,
        "model": model,
        "reference": reference,
        "errors": errors,
    }


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def _iv(interval, digits: int = 1) -> str:
    return "[n/a]" if interval is None else f"[{_pct(interval[0], digits)}, {_pct(interval[1], digits)}]"


def print_robustness(result: dict) -> None:
    model, figures = result["model"], result["model"]["figures"]
    n, level = figures["per_cell"], figures["level"]
    severities = result["severities"]
    corrupted = len(result["corrupted"])
    print(
        f"robustness of model {model['digest'][:12]} ({model['dir']}) on {result['dataset']}: "
        f"{len(result['corruptions'])} corruptions x {len(severities)} severities x {n} source images (seed {result['seed']})"
    )
    gen = result["generation_seconds"]
    print(
        f"generated {corrupted:,} corrupted images in {gen:.1f} s ({corrupted / max(gen, 1e-9):,.0f} img/s); "
        f"predicted {result['images']:,} in {model['predict_seconds']:.1f} s"
    )
    clean = figures["clean"]
    print(
        f"clean (the same {n} images): accuracy {_pct(clean['accuracy'], 2)}% {_iv(clean['interval'])}, "
        f"ECE {_pct(clean['ece'], 2)}% {_iv(clean['ece_interval'])}   (intervals: {level:.0%})"
    )
    half = max(c["interval"][1] - c["interval"][0] for c in figures["cells"]) / 2
    print(f"\naccuracy (%) per corruption and severity; the widest cell interval is +-{100 * half:.1f} points")
    head = " ".join(f"{'sev' + str(s):>6}" for s in severities)
    print(f"{'corruption':<15} {'family':<10} {'clean':>6} {head} | {'mean':>20} {'drop':>20} {'ECE':>20}")
    grid = {(c["corruption"], c["severity"]): c["accuracy"] for c in figures["cells"]}
    for name, row in figures["corruptions"].items():
        cells = " ".join(f"{_pct(grid[(name, s)]):>6}" for s in severities)
        print(
            f"{name:<15} {row['family']:<10} {_pct(clean['accuracy']):>6} {cells} | "
            f"{_pct(row['accuracy']) + ' ' + _iv(row['interval']):>20} "
            f"{_pct(row['drop']) + ' ' + _iv(row['drop_interval']):>20} "
            f"{_pct(row['ece']) + ' ' + _iv(row['ece_interval']):>20}"
        )
    print("\nmean corrupted accuracy per family (every cell weighs alike), and its drop against clean")
    for family, row in [*figures["families"].items(), ("all", figures["mean_corrupted"])]:
        print(
            f"  {family:<10} {_pct(row['accuracy'], 2):>6}% {_iv(row['interval'])}   drop {_pct(row['drop'], 2)} "
            f"points {_iv(row['drop_interval'])}   ({row['cells']} cells)"
        )
    print(f"\nthe {len(figures['worst'])} worst cells")
    for k, cell in enumerate(figures["worst"], start=1):
        print(
            f"  {k}. {cell['corruption']} severity {cell['severity']}: {_pct(cell['accuracy'])}% {_iv(cell['interval'])}, "
            f"drop {_pct(cell['drop'])} points {_iv(cell['drop_interval'])} (paired), ECE {_pct(cell['ece'])}% "
            f"{_iv(cell['ece_interval'])}"
        )
    errors = result["errors"]
    if errors is None:
        return
    ref = result["reference"]
    print(
        f"\nCorruption Error against the reference {ref['dir']} ({ref['digest'][:12]}): clean error "
        f"{_pct(errors['clean_error']['model'], 2)}% (model) vs {_pct(errors['clean_error']['reference'], 2)}% (reference)"
    )
    rf = ref["figures"]
    print(
        f"reference on the same images: clean {_pct(rf['clean']['accuracy'], 2)}% {_iv(rf['clean']['interval'])}, "
        f"mean corrupted {_pct(rf['mean_corrupted']['accuracy'], 2)}% {_iv(rf['mean_corrupted']['interval'])} "
        f"(model: {_pct(figures['mean_corrupted']['accuracy'], 2)}%)"
    )
    print(f"{'corruption':<15} {'CE':>24} {'relative CE':>24}   mean error: model / reference")
    for name, row in errors["corruptions"].items():
        print(
            f"{name:<15} {_pct(row['ce']) + '% ' + _iv(row['ce_interval']):>24} "
            f"{_pct(row['relative_ce']) + '% ' + _iv(row['relative_ce_interval']):>24}   "
            f"{_pct(row['model_error'])}% / {_pct(row['reference_error'])}%"
        )
    print(
        f"mCE {_pct(errors['mce'])}% {_iv(errors['mce_interval'])}, relative mCE {_pct(errors['relative_mce'])}% "
        f"{_iv(errors['relative_mce_interval'])} (below 100%: the model errs / loses less than the reference)"
    )
    if errors["undefined"]:
        print(f"CE undefined (the reference makes no error): {', '.join(errors['undefined'])}")
    if errors["relative_undefined"]:
        print(f"relative CE undefined (the reference loses nothing): {', '.join(errors['relative_undefined'])}")


def write_robustness_predictions(path: str | Path, result: dict) -> None:
    """CSV: row,source,corruption,severity,label,prediction,confidence; the clean cell (severity 0) first."""
    rows, model = result["rows"], result["model"]
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["row", "source", "corruption", "severity", "label", "prediction", "confidence"])
        for i, values in enumerate(
            zip(rows["source"], rows["corruption"], rows["severity"], rows["labels"], model["predictions"])
        ):
            src, name, sev, label, pred = values
            out.writerow([i, int(src), name, int(sev), int(label), int(pred), f"{float(model['confidences'][i]):.6f}"])


def robustness_json(result: dict) -> dict:
    """Everything but the per-image arrays (those are in the predictions CSV)."""
    side = lambda m: None if m is None else {"dir": m["dir"], "digest": m["digest"], "figures": m["figures"]}
    return {
        "date": time.strftime("%Y-%m-%d"),
        "dataset": result["dataset"],
        "corruptions": list(result["corruptions"]),
        "severities": list(result["severities"]),
        "per_cell": result["per_cell"],
        "seed": result["seed"],
        "generation_seconds": result["generation_seconds"],
        "model": side(result["model"]),
        "reference": side(result["reference"]),
        "corruption_errors": result["errors"],
    }


def write_robustness_plots(directory: str | Path, result: dict) -> list[Path]:
    """heatmap.png (and heatmap-reference.png) and gallery.png (the first source image of the subset)."""
    from train.corruptions import CORRUPTIONS
    from train.robustness_plots import plot_gallery, plot_heatmap

    directory = Path(directory)
    corrupted = result["corrupted"]
    first = np.flatnonzero(corrupted.source == corrupted.sources[0])
    examples = {(str(corrupted.corruption[i]), int(corrupted.severity[i])): corrupted.images[i] for i in first}
    clean = int(corrupted.sources[0])
    written = [
        plot_heatmap(
            directory / "heatmap.png",
            result["model"]["figures"],
            f"{Path(result['model']['dir']).name}: accuracy per corruption and severity "
            f"({result['per_cell']} images per cell)",
        )
    ]
    if result["reference"]:
        written.append(
            plot_heatmap(
                directory / "heatmap-reference.png",
                result["reference"]["figures"],
                f"{Path(result['reference']['dir']).name} (reference): accuracy per corruption and severity",
            )
        )
    written.append(
        plot_gallery(
            directory / "gallery.png",
            result["clean_images"][0],
            examples,
            {n: CORRUPTIONS[n].family for n in result["corruptions"]},
            f"test image {clean} under every corruption and severity (seed {result['seed']})",
        )
    )
    return written


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _robustness_settings(args) -> dict:
    """The robustness flags over configs/robustness.py, validated; ValueError (one line) when one is bad."""
    from train.corruptions import parse_corruptions, parse_severities

    config = load_config(None, "robustness.py")
    given = {k: getattr(args, k) for k in ("severities", "per_cell", "seed", "reference", "plots", "json")}
    if args.corruptions is None:
        named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if named:
            raise ValueError(f"{', '.join(named)}: for a robustness run only; add --corruptions all|NAME,NAME")
        return {}

    settings = {
        "corruptions": parse_corruptions(args.corruptions),
        "severities": parse_severities(args.severities if args.severities is not None else config.severities),
        # their domains (configs/flags.py) were checked as they were parsed
        "per_cell": args.per_cell if args.per_cell is not None else config.per_cell,
        "seed": args.seed if args.seed is not None else config.seed,
    }
    for flag, directory in (("--model", args.model), ("--reference", args.reference)):
        if directory is not None and not (Path(directory) / "metadata.json").is_file():
            raise ValueError(
                f"{flag} {directory}: no metadata.json there; pass a directory written by 'python -m train'"
            )
    if args.plots is not None:
        try:
            Path(args.plots).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"--plots {args.plots}: cannot create the directory ({err.strerror})") from None
    return settings


def make_parser() -> FlagParser:
    """The flags; FlagParser checks each against configs/flags.py as soon as it is parsed (before JAX)."""
    parser = FlagParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model directory (checkpoint + metadata.json; default: the shipped model)")
    parser.add_argument("--predictions", help="write per-image predictions to this CSV file")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test images (0 = all)")
    robust = parser.add_argument_group("robustness (defaults: configs/robustness.py)")
    robust.add_argument("--corruptions", help="all, or a comma-separated list of corruption names")
    robust.add_argument("--severities", help="e.g. 1-5, 3 or 1,3,5 (default 1-5)")
    robust.add_argument("--per-cell", type=int, help="source images per corruption x severity cell (default 500)")
    robust.add_argument("--seed", type=int, help="picks the source images and seeds the corruptions (default 0)")
    robust.add_argument("--reference", help="reference model directory for CE, mCE and relative mCE")
    robust.add_argument("--plots", help="write heatmap.png and gallery.png into this directory")
    robust.add_argument("--json", help="write the robustness figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        settings = _robustness_settings(args)
    except ValueError as err:
        return _fail(str(err))

    from train.checkpoint import DEFAULT_MODEL_DIR, ModelError, load_metadata  # JAX and Orbax load from here on

    try:
        if settings:
            result = evaluate_robustness(args.model, reference_dir=args.reference, limit=args.limit or None, **settings)
        else:
            result = evaluate_model(args.model, args.limit or None)  # --limit 0: the whole test set
            meta = load_metadata(args.model or DEFAULT_MODEL_DIR)
    except (DatasetError, ModelError) as err:
        return _fail(str(err))
    if not settings:
        print_report(result, meta)
        if args.predictions:
            write_predictions(args.predictions, result)
            print(f"predictions -> {args.predictions}")
        return 0
    print_robustness(result)
    if args.predictions:
        write_robustness_predictions(args.predictions, result)
        print(f"predictions -> {args.predictions}")
    if args.json:
        Path(args.json).write_text(json.dumps(robustness_json(result), indent=2) + "\n")
        print(f"figures -> {args.json}")
    if args.plots:
        for path in write_robustness_plots(args.plots, result):
            print(f"plot -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
