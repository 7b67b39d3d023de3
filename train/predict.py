"""Predict pictures locally with a saved model, no broker involved.

    python -m train.predict IMAGE [IMAGE ...] [--model DIR] [--top-k K]
    python -m train.predict --index N [--model DIR]      # the N-th Fashion-MNIST test image

Any PNG/JPEG size or mode is accepted: see train.data.load_image for the
conversion (grayscale, inversion of light-background photos, letterbox, resize).
"""

from __future__ import annotations

import sys

import numpy as np

from configs.flags import FlagParser
from train.checkpoint import DEFAULT_MODEL_DIR, ModelError, load_metadata
from train.data import DatasetError, load_fashion_mnist, load_image


def predict_images(images: np.ndarray, model_dir=DEFAULT_MODEL_DIR, k: int = 3) -> list[dict]:
    """Label, class name, confidence and top-k for each uint8 (H, W, C) image."""
    from train.model import top_k  # imported here: main() checks its flags before JAX loads
    from train.predictor import load_predictor

    predictor = load_predictor(model_dir)
    names = predictor.meta["class_names"]
    labels, probs = top_k(predictor(images), k)
    return [
        {
            "label": int(row[0]),
            "class_name": names[row[0]],
            "confidence": float(p[0]),
            "top_k": [{"label": int(i), "class_name": names[i], "confidence": float(c)} for i, c in zip(row, p)],
        }
        for row, p in zip(labels, probs)
    ]


def make_parser() -> FlagParser:
    parser = FlagParser(prog="python -m train.predict", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", help="PNG/JPEG files")
    parser.add_argument("--index", type=int, action="append", help="a Fashion-MNIST test-set index (repeatable)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--top-k", type=int, default=3)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not args.images and not args.index:
        parser.error("give IMAGE files or --index N")
    try:
        shape = tuple(load_metadata(args.model)["input_shape"])
        names, arrays, truth = [], [], []
        for path in args.images:
            arrays.append(load_image(path, shape))
            names.append(path)
            truth.append(None)
        if args.index:
            test = load_fashion_mnist("test")
            for i in args.index:
                if not 0 <= i < len(test):
                    raise DatasetError(f"--index {i} is outside the test set (0..{len(test) - 1})")
                arrays.append(test.images[i])
                names.append(f"test[{i}]")
                truth.append(test.class_names[test.labels[i]])
        results = predict_images(np.stack(arrays), args.model, args.top_k)
    except (DatasetError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, res, true in zip(names, results, truth):
        extra = f"  (true: {true})" if true else ""
        others = ", ".join(f"{t['class_name']} {t['confidence']:.1%}" for t in res["top_k"][1:])
        print(
            f"{name}: label {res['label']} {res['class_name']!r} confidence {res['confidence']:.2%}{extra}  [next: {others}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
