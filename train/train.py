"""Training library: `train_and_evaluate(config, workdir)` (the flax/examples/mnist shape)."""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from results import agreement
from results import metrics as results_metrics
from results.machine import machine
from train import calibration
from train import data as data_lib
from train.checkpoint import save_model
from train.evaluate import offline_result
from train.model import CNN, build_model, count_params, make_predict_fn, predict_in_batches
from train.splits import Splits, training_splits


# --------------------------------------------------------- augmentation
@partial(jax.jit, static_argnames=("crop_pad", "hflip", "erase_prob", "erase_max_frac"))
def augment(key, images, crop_pad: int, hflip: bool, erase_prob: float, erase_max_frac: float):
    """Random crop (zero pad), horizontal flip and random erasing, on uint8 batches."""
    n, h, w, _ = images.shape
    k_crop, k_flip, k_erase, k_box = jax.random.split(key, 4)
    x = images.astype(jnp.float32)
    if crop_pad:
        padded = jnp.pad(x, ((0, 0), (crop_pad, crop_pad), (crop_pad, crop_pad), (0, 0)))
        offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * crop_pad + 1)
        crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))  # noqa: E731
        x = jax.vmap(crop)(padded, offsets)
    if hflip:
        x = jnp.where(jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1)), x[:, :, ::-1], x)
    if erase_prob:
        u = jax.random.uniform(k_box, (n, 4))
        eh, ew = jnp.ceil(u[:, 0] * erase_max_frac * h), jnp.ceil(u[:, 1] * erase_max_frac * w)
        y0, x0 = jnp.floor(u[:, 2] * (h - eh + 1)), jnp.floor(u[:, 3] * (w - ew + 1))
        rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
        box = (rows >= y0[:, None, None]) & (rows < (y0 + eh)[:, None, None])
        box &= (cols >= x0[:, None, None]) & (cols < (x0 + ew)[:, None, None])
        box &= jax.random.bernoulli(k_erase, erase_prob, (n, 1, 1))
        x = jnp.where(box[..., None], 0.0, x)
    return x


# ------------------------------------------------------ train/eval steps
# What the EMA averages: weights and BatchNorm statistics, not the dropout RNG state.
AVERAGED = nnx.Any(nnx.Param, nnx.BatchStat)


def loss_fn(model: CNN, images, labels, label_smoothing: float):
    logits = model(images)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean(), logits


@nnx.jit(static_argnames="label_smoothing")
def train_step(model: CNN, optimizer: nnx.Optimizer, images, labels, label_smoothing: float = 0.0):
    """One AdamW step; returns (loss, accuracy) of the batch."""
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, images, labels, label_smoothing)
    optimizer.update(model, grads)
    return loss, (logits.argmax(-1) == labels).mean()


@jax.jit
def ema_step(ema: nnx.State, current: nnx.State, step: jax.Array, decay: float) -> nnx.State:
    """Exponential moving average of the weights; the warm-up keeps early steps from dominating."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, current)


def eval_step(predict, state, ds: data_lib.Dataset, batch_size: int) -> dict:
    """Accuracy of `state` on a labelled split."""
    probs = predict_in_batches(predict, state, ds.images, batch_size)
    return {"accuracy": results_metrics.accuracy(offline_result(probs, ds))}


# ------------------------------------------------------------- the loop
def make_optimizer(model: CNN, config, steps_per_epoch: int) -> nnx.Optimizer:
    total = max(1, config.num_epochs * steps_per_epoch)
    schedule = optax.cosine_onecycle_schedule(
        total, config.learning_rate, pct_start=config.warmup_fraction, div_factor=25.0, final_div_factor=1e3
    )
    return nnx.Optimizer(model, optax.adamw(schedule, weight_decay=config.weight_decay), wrt=nnx.Param)


def train_epoch(
    model, optimizer, ema, train_ds, config, epoch: int, rng, key, run_bar: tqdm | None = None
) -> tuple[dict, nnx.State, jax.Array]:
    """One pass over the shuffled training set with augmentation; returns (metrics, ema, key).

    Its own bar shows the epoch's elapsed and remaining time; `run_bar` (every step of every epoch)
    the whole run's.
    """
    model.train()
    steps = len(train_ds) // config.batch_size
    order = rng.permutation(len(train_ds))
    aug = dict(config.augment.to_dict())
    bar = tqdm(
        range(steps), desc=f"epoch {epoch}/{config.num_epochs}", unit="batch", leave=False, position=1, smoothing=0
    )
    losses, accs = [], []
    for step in bar:
        idx = order[step * config.batch_size : (step + 1) * config.batch_size]
        key, sub = jax.random.split(key)
        images = augment(sub, train_ds.images[idx], **aug)
        loss, acc = train_step(model, optimizer, images, train_ds.labels[idx], config.label_smoothing)
        ema = ema_step(ema, nnx.state(model, AVERAGED), (epoch - 1) * steps + step, config.ema_decay)
        losses.append(loss)
        accs.append(acc)
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{float(np.mean(losses[-20:])):.4f}", acc=f"{float(np.mean(accs[-20:])):.4f}")
        if run_bar is not None:
            run_bar.update(1)
    bar.close()
    return {"train_loss": float(np.mean(losses)), "train_accuracy": float(np.mean(accs))}, ema, key


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, splits: Splits | None = None) -> dict:
    """Train per `config`, choose the epoch on validation, fit the temperature, test once, save.

    `splits`: the config's (train, validation, test), when the caller loaded them already (`python -m train`
    does, before JAX loads, so that a data problem is one line at once).
    """
    started = time.time()
    train_ds, val_ds, test_ds = splits or training_splits(config)
    input_shape = train_ds.images.shape[1:]
    model = build_model(config.model.to_dict(), input_shape, len(train_ds.class_names), config.seed)
    steps_per_epoch = len(train_ds) // config.batch_size
    optimizer = make_optimizer(model, config, steps_per_epoch)
    averaged = nnx.clone(model)  # holds the EMA weights; eval mode from here on
    # Validation sees what serving will see, flips included, so the epoch and temperature fit it.
    predict, _ = make_predict_fn(averaged, flip=config.test_time_flip)
    ema = best = nnx.state(model, AVERAGED)
    rng, key = np.random.default_rng(config.seed), jax.random.key(config.seed)
    history, best_epoch, best_acc = [], 0, -1.0
    # The whole run's elapsed and remaining time, from its first steps (the epoch bar alone said 7
    # minutes where 5 hours remained). smoothing=0: both bars' rates are averages since they started,
    # validation pauses included. JAX runs steps ahead and waits every 20 (the loss read-out), so the
    # per-update rates tqdm smooths by default swung 4x: "4 to 16 minutes left" within one second.
    run_bar = tqdm(
        total=config.num_epochs * steps_per_epoch, desc="training run", unit="batch", position=0, smoothing=0
    )
    for epoch in range(1, config.num_epochs + 1):
        epoch_started = time.time()
        metrics, ema, key = train_epoch(model, optimizer, ema, train_ds, config, epoch, rng, key, run_bar)
        nnx.update(averaged, ema)
        val = eval_step(predict, nnx.state(averaged), val_ds, config.eval_batch_size)
        history.append(
            {"epoch": epoch, **metrics, "val_accuracy": val["accuracy"], "elapsed_s": round(time.time() - started, 1)}
        )
        if val["accuracy"] >= best_acc:  # ties go to the later, better-annealed epoch
            best, best_epoch, best_acc = ema, epoch, val["accuracy"]
        tqdm.write(
            f"epoch {epoch}: train loss {metrics['train_loss']:.4f}, validation accuracy (EMA) {val['accuracy']:.4%}"
            f" ({time.time() - epoch_started:.0f} s)"
        )
    run_bar.close()

    # The chosen weights, then the temperature fitted on validation, then the test set, once.
    nnx.update(averaged, best)
    raw_val = predict_in_batches(predict, nnx.state(averaged), val_ds.images, config.eval_batch_size)
    temperature = calibration.fit_temperature(raw_val, val_ds.labels)
    raw_test = predict_in_batches(predict, nnx.state(averaged), test_ds.images, config.eval_batch_size)
    served, state = make_predict_fn(averaged, temperature, config.test_time_flip)
    probs = predict_in_batches(served, state, test_ds.images, config.eval_batch_size)
    test = offline_result(probs, test_ds)
    after = results_metrics.calibration(test)
    before = results_metrics.calibration_report(raw_test, test_ds.labels)
    tqdm.write(
        f"temperature {temperature:.4f}: test ECE {before['ece']:.2%} -> {after['ece']:.2%}, "
        f"NLL {before['nll']:.4f} -> {after['nll']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}"
    )
    metadata = {
        "dataset": train_ds.name,
        "class_names": list(train_ds.class_names),
        "input_shape": list(input_shape),
        "input_dtype": "uint8",
        "config_name": config.name,
        "config": config.to_dict(),
        "model_config": config.model.to_dict(),
        "eval_batch_size": config.eval_batch_size,
        "temperature": temperature,
        "test_time_flip": bool(config.test_time_flip),
        "test_accuracy": results_metrics.accuracy(test),
        "per_class_accuracy": {row["class"]: row["accuracy"] for row in results_metrics.per_class(test)},
        "test_images": len(test.answers),
        "test_calibration": {
            "bins": results_metrics.ECE_BINS,
            "before_scaling": {k: before[k] for k in ("ece", "max_gap", "mean_confidence", "nll", "brier")},
            "after_scaling": {k: after[k] for k in ("ece", "max_gap", "mean_confidence", "nll", "brier")},
        },
        "test_predictions": agreement.encode_predictions(probs.argmax(-1), probs.max(-1)),
        "train_images": len(train_ds),
        "validation": {
            "images": len(val_ds),
            "rule": f"validation_size={config.validation_size} held out of the training split, seed [{config.seed}, 1]"
            + ("" if config.validation_size < 1 or len(val_ds) == int(config.validation_size) else ", capped at 10%"),
            "chosen_epoch": best_epoch,
            "accuracy": best_acc,
        },
        "param_count": count_params(model),
        "train_time_s": round(time.time() - started, 1),
        "history": history,
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
        "machine": machine(),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    metadata = _jsonable(metadata)
    return save_model(workdir, averaged, metadata)


def _jsonable(obj):
    """ConfigDicts hold tuples; JSON wants lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj):
        return _jsonable(dataclasses.asdict(obj))
    return obj
