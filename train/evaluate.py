"""Offline evaluation of a saved model on the Fashion-MNIST test set (no broker).

    python -m train.evaluate [--model DIR] [--predictions FILE.csv] [--limit N]

Uses the same batch size as training's final evaluation, so its labels reproduce the ones
metadata.json records, image by image, and its float figures agree within the one tolerance of
results/agreement.py (the last float digits depend on the machine's instruction set). Its result
is a run result like a streamed run's (results/run.py), which the streamed report is compared
against, prediction by prediction; the predictions file holds one row per test image.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np

from results import agreement, metrics
from results.run import Answers, Counters, ModelIdentity, RunInfo, RunResult, dataset_identity
from train.checkpoint import DEFAULT_MODEL_DIR, ModelError, decode_predictions, load_metadata
from train.data import Dataset, DatasetError, load_fashion_mnist, take
from train.model import predict_in_batches
from train.predictor import load_predictor


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


def evaluate_model(model_dir: str | Path = DEFAULT_MODEL_DIR, limit: int | None = None, dataset=None) -> RunResult:
    """Every prediction of the model, with its confidence and probabilities, as a run result.

    On `dataset` (a train.data.Dataset) when given, else on Fashion-MNIST's test split; only
    its first `limit` images when a limit is given.
    """
    predictor = load_predictor(model_dir)
    meta = predictor.meta
    test = take(dataset if dataset is not None else load_fashion_mnist("test"), limit)
    probs = predict_in_batches(predictor.predict, predictor.state, test.images, meta.get("eval_batch_size", 1000))
    identity = meta["checkpoint_sha256"][:16]
    return offline_result(probs, test, ModelIdentity(identity, (identity,), str(model_dir)))


def check_against_metadata(result: RunResult, meta: dict) -> agreement.Agreement | None:
    """The evaluation against what training recorded (metadata.json): labels identical, floats within
    results/agreement.py's tolerance.

    None when the result is not of the recorded test set (another size, or another dataset).
    Models trained before per-image predictions were recorded are checked on their figures only.
    """
    n, answers = len(result.answers), result.answers
    recorded = meta.get("test_predictions")
    if recorded is not None and recorded.get("n") == n:
        labels, confidences = decode_predictions(recorded)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model directory (checkpoint + metadata.json)")
    parser.add_argument("--predictions", help="write per-image predictions to this CSV file")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test images")
    args = parser.parse_args(argv)
    try:
        result = evaluate_model(args.model, args.limit)
        meta = load_metadata(args.model)
    except (DatasetError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(result, meta)
    if args.predictions:
        write_predictions(args.predictions, result)
        print(f"predictions -> {args.predictions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
