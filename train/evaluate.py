"""Offline evaluation of a saved model on the Fashion-MNIST test set (no broker).

    python -m train.evaluate [--model DIR] [--predictions FILE.csv] [--limit N]

Uses the same batch size as training's final evaluation, so its labels reproduce the ones
metadata.json records, image by image, and its float figures agree within the one tolerance of
results/agreement.py (the last float digits depend on the machine's instruction set). The
predictions file (one row per test image) is what the streamed report is compared against,
prediction by prediction.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np

from configs.flags import FlagParser
from results import agreement
from train.calibration import ECE_BINS, calibration_report
from train.checkpoint import DEFAULT_MODEL_DIR, ModelError
from train.data import DatasetError, load_fashion_mnist, take


def accuracy_report(probs: np.ndarray, labels: np.ndarray, class_names) -> dict:
    """Overall and per-class accuracy (None for a class with no images)."""
    preds = probs.argmax(-1)
    per_class = {
        name: float((preds[labels == i] == i).mean()) if (labels == i).any() else None
        for i, name in enumerate(class_names)
    }
    return {"accuracy": float((preds == labels).mean()), "per_class_accuracy": per_class, "n": int(len(labels))}


def evaluate_model(model_dir: str | Path = DEFAULT_MODEL_DIR, limit: int | None = None, dataset=None) -> dict:
    """Accuracy, per-class accuracy, calibration and per-image predictions of the model.

    On `dataset` (a train.data.Dataset) when given, else on Fashion-MNIST's test split; only
    its first `limit` images when a limit is given.
    """
    from train.model import predict_in_batches  # imported here: main() checks its flags before JAX loads
    from train.predictor import load_predictor

    predictor = load_predictor(model_dir)
    meta = predictor.meta
    test = take(dataset if dataset is not None else load_fashion_mnist("test"), limit)
    probs = predict_in_batches(predictor.predict, predictor.state, test.images, meta.get("eval_batch_size", 1000))
    report = accuracy_report(probs, test.labels, meta["class_names"])
    report.update(
        calibration=calibration_report(probs, test.labels),
        metadata_calibration=meta.get("test_calibration", {}).get("after_scaling"),
        predictions=probs.argmax(-1),
        confidences=probs.max(-1),
        labels=test.labels,
        metadata_accuracy=meta["test_accuracy"],
        metadata_test_images=meta.get("test_images"),
        metadata_predictions=meta.get("test_predictions"),
        model_digest=meta["checkpoint_sha256"],
        class_names=meta["class_names"],
    )
    return report


def write_predictions(path: str | Path, report: dict) -> None:
    """CSV: index,label,prediction,confidence (language-neutral, diffable)."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["index", "label", "prediction", "confidence"])
        for i, (y, p, c) in enumerate(zip(report["labels"], report["predictions"], report["confidences"])):
            out.writerow([i, int(y), int(p), f"{float(c):.6f}"])


def print_report(report: dict) -> None:
    print(f"model {report['model_digest'][:12]}  test images {report['n']}")
    for name, acc in report["per_class_accuracy"].items():
        print(f"  {name:<12} {acc:7.2%}" if acc is not None else f"  {name:<12}     n/a (no test images)")
    print(f"accuracy {report['accuracy']:.4%} ({int(round(report['accuracy'] * report['n']))}/{report['n']})")
    cal = report["calibration"]
    print(
        f"calibration: ECE {cal['ece']:.2%} (15 bins), max bin gap {cal['max_gap']:.2%}, "
        f"mean confidence {cal['mean_confidence']:.2%} vs accuracy {cal['accuracy']:.2%}, "
        f"NLL {cal['nll']:.4f}, Brier {cal['brier']:.4f}"
    )
    check = check_against_metadata(report)
    if check is not None:
        print("matches metadata.json" if check.ok else f"DIFFERS from metadata.json: {check.describe()}")


def check_against_metadata(report: dict) -> agreement.Agreement | None:
    """The evaluation against what training recorded: labels identical, floats within the tolerance.

    None when the report is not of the recorded test set (another size, or another dataset).
    Models trained before per-image predictions were recorded are checked on their figures only.
    """
    recorded = report.get("metadata_predictions")
    if recorded is not None and recorded.get("n") == report["n"]:
        try:
            labels, confidences = agreement.decode_predictions(recorded)
        except ValueError as err:
            raise ModelError(f"metadata.json: {err}") from None
        check = agreement.compare_predictions(labels, report["predictions"], confidences, report["confidences"])
        ece_allowed = agreement.ece_allowance(confidences, ECE_BINS)
    elif recorded is None and report["n"] == (report.get("metadata_test_images") or 10000):
        # A crossing needs both confidences within the tolerance of the edge: either side can stand in.
        check = agreement.Agreement(report["n"], [], 0.0, [])
        ece_allowed = agreement.ece_allowance(report["confidences"], ECE_BINS)
    else:
        return None
    expected = {"accuracy": report["metadata_accuracy"], **(report["metadata_calibration"] or {})}
    got = {"accuracy": report["accuracy"], **report["calibration"]}
    # Accuracy is a count of identical labels: any difference is a real one.
    allowed = {"accuracy": 0.0, "ece": ece_allowed, "mean_confidence": agreement.TOLERANCE}
    allowed |= {"nll": agreement.TOLERANCE, "brier": agreement.TOLERANCE}
    differences = agreement.compare_figures(expected, got, allowed)
    return dataclasses.replace(check, differences=check.differences + differences)


def make_parser() -> FlagParser:
    parser = FlagParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model directory (checkpoint + metadata.json)")
    parser.add_argument("--predictions", help="write per-image predictions to this CSV file")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test images (0 = all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        report = evaluate_model(args.model, args.limit or None)
    except (DatasetError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report)
    if args.predictions:
        write_predictions(args.predictions, report)
        print(f"predictions -> {args.predictions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
