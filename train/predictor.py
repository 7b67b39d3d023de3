"""A saved model, ready to predict: the one jitted predict function with its state and metadata."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from train.checkpoint import DEFAULT_MODEL_DIR, load_model
from train.model import make_predict_fn


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A model ready to serve: the one jitted predict function, its state and its metadata.

    Evaluators and servers are handed one of these; they never build models themselves.
    """

    predict: Callable[[object, jax.Array], jax.Array]
    state: object
    meta: dict

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> calibrated class probabilities (N, classes)."""
        return np.asarray(self.predict(self.state, images))


def load_predictor(model_dir: str | Path = DEFAULT_MODEL_DIR, verify: bool = True) -> Predictor:
    """Restore a model and wrap it with the temperature and test-time flip its metadata.json records.

    Models saved before either existed predict with temperature 1.0 and no flip.
    """
    model, meta = load_model(model_dir, verify)
    predict, state = make_predict_fn(model, meta.get("temperature", 1.0), meta.get("test_time_flip", False))
    return Predictor(predict, state, meta)
