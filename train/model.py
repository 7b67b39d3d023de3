"""The Flax NNX CNN and the pure predict function the server jits.

Pixels enter as uint8 (N, H, W, C); normalisation happens inside the model so
every caller (training, evaluation, server, local predict) feeds identical bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Fashion-MNIST training-set pixel statistics (on the 0..1 scale).
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530


def conv_kernel_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Flax's default kernel initialiser (LeCun normal), drawn as a (fan_in, out) matrix and reshaped.

    The same numbers, bit for bit: JAX's random bits follow the flattened index, and the fan-in is the same.
    XLA compiles random numbers for small 4-D shapes slowly: (3, 3, 8, 16) took 5.5-6.8 s on the AVX2
    machine, (72, 16) 0.4 s; eleven conv kernels, 26.3 s against 7.6 s.
    """
    fan_in = math.prod(shape[:-1])
    return nnx.initializers.lecun_normal()(key, (fan_in, shape[-1]), dtype).reshape(shape)


class ConvBlock(nnx.Module):
    """`convs` × (3×3 conv → BatchNorm → ReLU), then 2×2 max-pool and dropout."""

    def __init__(self, in_ch: int, out_ch: int, convs: int, dropout: float, *, rngs: nnx.Rngs):
        chans = [in_ch] + [out_ch] * convs
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, (3, 3), padding="SAME", use_bias=False, kernel_init=conv_kernel_init, rngs=rngs)
                for a, b in zip(chans, chans[1:])
            ]
        )
        self.norms = nnx.List([nnx.BatchNorm(out_ch, momentum=0.9, rngs=rngs) for _ in range(convs)])
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, norm in zip(self.convs, self.norms):
            x = nnx.relu(norm(conv(x)))
        # Both give the same values. XLA's CPU backward of max_pool (select-and-scatter) is slow:
        # a (32, 64, 128) training step took 228 ms with it and 188 ms with the reshape, while
        # serving is faster with max_pool (6,567 vs 6,015 img/s at batch 256 on an AVX-512 machine).
        x = nnx.max_pool(x, (2, 2), strides=(2, 2)) if self.dropout.deterministic else max_pool_2x2(x)
        return self.dropout(x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, VALID (an odd last row or column is dropped) as a reshape and a max."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNN(nnx.Module):
    """conv-BN blocks with pooling, then a dropout-regularised dense head."""

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int] = (32, 64),
        convs_per_block: int = 2,
        dense: int = 256,
        dropout_conv: float = 0.1,
        dropout_dense: float = 0.4,
        rngs: nnx.Rngs,
    ):
        height, width, channels = input_shape
        chans = [channels, *widths]
        self.blocks = nnx.List(
            [ConvBlock(a, b, convs_per_block, dropout_conv, rngs=rngs) for a, b in zip(chans, chans[1:])]
        )
        scale = 2 ** len(widths)
        flat = (height // scale) * (width // scale) * widths[-1]
        self.hidden = nnx.Linear(flat, dense, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_dense, rngs=rngs)
        self.head = nnx.Linear(dense, num_classes, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        """uint8 or float pixels in 0..255, shape (N, H, W, C) → logits (N, classes)."""
        x = (images.astype(jnp.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD
        for block in self.blocks:
            x = block(x)
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(nnx.relu(self.hidden(x)))
        return self.head(x)


def build_model(model_config: dict, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> CNN:
    """Build a CNN from the `model` section of a config."""
    return CNN(input_shape=tuple(input_shape), num_classes=num_classes, rngs=nnx.Rngs(seed), **model_config)


def count_params(model: nnx.Module) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def make_predict_fn(
    model: CNN, temperature: float = 1.0, flip: bool = False
) -> tuple[Callable[[nnx.State, jax.Array], jax.Array], nnx.State]:
    """Split an eval-mode model once and return (jitted predict(state, uint8) -> probs, state).

    The one predict function: training's evaluation, `train.evaluate`, `train.predict` and the
    server all call it, so they agree bit for bit. `temperature` (fitted on validation data,
    stored in metadata.json) divides the logits; it changes confidences, never the argmax.
    `flip` (test-time augmentation, metadata's "test_time_flip") averages the logits of each image
    and its mirror image; it doubles the model's work, so it is only for models trained with flips.
    A plain `jax.jit` over the split state avoids nnx.jit's per-call Python graph traversal,
    which matters on the serving hot path.
    """
    model.eval()
    graphdef, state = nnx.split(model)
    inv_t = 1.0 / float(temperature)

    @jax.jit
    def predict(state: nnx.State, images: jax.Array) -> jax.Array:
        net = nnx.merge(graphdef, state)
        if flip:
            # One forward pass over [images; mirrored] rather than two calls: one batch of 2N.
            both = net(jnp.concatenate([images, images[:, :, ::-1]]))
            logits = 0.5 * (both[: images.shape[0]] + both[images.shape[0] :])
        else:
            logits = net(images)
        return jax.nn.softmax(logits * inv_t, axis=-1)

    return predict, state


def predict_in_batches(predict, state: nnx.State, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities for all images in fixed-size batches (the last one zero-padded).

    Training's final evaluation, `python -m train.evaluate` and the streamer's offline
    check all go through here with the same batch size, so they agree bit for bit.
    """
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        padded = np.zeros((batch_size, *chunk.shape[1:]), chunk.dtype)
        padded[: len(chunk)] = chunk
        out.append(np.asarray(predict(state, padded))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most likely classes of each row and their probabilities, best first: (labels, probs)."""
    labels = np.argsort(-probs, axis=-1)[..., :k]
    return labels, np.take_along_axis(probs, labels, axis=-1)
