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

from train.checkpoint import DEFAULT_MODEL_DIR, ModelError, load_model
from train.data import DatasetError, load_fashion_mnist, take
from train.model import make_predict_fn, predict_in_batches
from train.train import accuracy_report


def evaluate_model(model_dir: str | Path = DEFAULT_MODEL_DIR, limit: int | None = None) -> dict:
    """Accuracy, per-class accuracy and per-image predictions of the model on the test split."""
    model, meta = load_model(model_dir)
    test = take(load_fashion_mnist("test"), limit)
    predict, state = make_predict_fn(model)
    probs = predict_in_batches(predict, state, test.images, meta.get("eval_batch_size", 1000))
    report = accuracy_report(probs, test.labels, meta["class_names"])
    report.update(
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
    if report["n"] == 10000:
        same = np.isclose(report["accuracy"], report["metadata_accuracy"], rtol=0, atol=1e-12)
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
