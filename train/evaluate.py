"""Offline evaluation of a saved model on the Fashion-MNIST test set (no broker).

    python -m train.evaluate [--model DIR] [--predictions FILE.csv] [--limit N]

Uses the same batch size as training's final evaluation, so the accuracy it
prints reproduces metadata.json exactly. The predictions file (one row per test
image) is what the streamed report is compared against, prediction by prediction.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from train.calibration import calibration_report
from train.checkpoint import DEFAULT_MODEL_DIR, ModelError
from train.data import DatasetError, load_fashion_mnist, take
from train.model import predict_in_batches
from train.predictor import load_predictor


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
    if report["n"] == 10000:
        same = report["accuracy"] == report["metadata_accuracy"]
        meta_cal = report["metadata_calibration"]
        if meta_cal is not None:
            same = same and cal["ece"] == meta_cal["ece"]
        print("matches metadata.json" if same else f"DIFFERS from metadata.json ({report['metadata_accuracy']:.4%})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model directory (checkpoint + metadata.json)")
    parser.add_argument("--predictions", help="write per-image predictions to this CSV file")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test images")
    args = parser.parse_args(argv)
    try:
        report = evaluate_model(args.model, args.limit)
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
