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

from train import data as data_lib
from train.checkpoint import save_model
from train.model import CNN, build_model, count_params, predict_in_batches


# ----------------------------------------------------------------- data
def load_datasets(config: ml_collections.ConfigDict) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """The (train, test) pair the config names, shrunk by train_limit/test_limit."""
    names = tuple(config.class_names) or None
    if config.dataset == "fashion_mnist":
        train_ds, test_ds = data_lib.load_fashion_mnist("train"), data_lib.load_fashion_mnist("test")
    elif config.dataset == "idx":
        train_ds = data_lib.load_idx_pair(config.images_path, config.labels_path, names)
        test_ds = data_lib.load_idx_pair(config.test_images_path, config.test_labels_path, train_ds.class_names)
    elif config.dataset == "folder":
        shape = tuple(config.image_shape)
        train_ds = data_lib.load_image_folder(config.image_dir, shape, names)
        if config.test_image_dir:
            test_ds = data_lib.load_image_folder(config.test_image_dir, shape, train_ds.class_names)
        else:
            train_ds, test_ds = data_lib.split_dataset(train_ds, config.test_fraction, config.seed)
    else:
        raise data_lib.DatasetError(f"unknown dataset {config.dataset!r}: use fashion_mnist, idx or folder")
    return (
        data_lib.take(train_ds, config.train_limit or None),
        data_lib.take(test_ds, config.test_limit or None),
    )


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


def make_eval_step(model: CNN):
    """A jitted eval_step(state, images) -> probabilities for the eval-mode graph of `model`."""
    model.eval()
    graphdef = nnx.graphdef(model)
    model.train()

    @jax.jit
    def eval_step(state, images):
        return jax.nn.softmax(nnx.merge(graphdef, state)(images), axis=-1)

    return eval_step


def accuracy_report(probs: np.ndarray, labels: np.ndarray, class_names) -> dict:
    preds = probs.argmax(-1)
    per_class = {
        name: float((preds[labels == i] == i).mean()) if (labels == i).any() else None
        for i, name in enumerate(class_names)
    }
    return {"accuracy": float((preds == labels).mean()), "per_class_accuracy": per_class, "n": int(len(labels))}


# ------------------------------------------------------------- the loop
def make_optimizer(model: CNN, config, steps_per_epoch: int) -> nnx.Optimizer:
    total = max(1, config.num_epochs * steps_per_epoch)
    schedule = optax.cosine_onecycle_schedule(
        total, config.learning_rate, pct_start=config.warmup_fraction, div_factor=25.0, final_div_factor=1e3
    )
    return nnx.Optimizer(model, optax.adamw(schedule, weight_decay=config.weight_decay), wrt=nnx.Param)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train per `config`, evaluate on the test split each epoch, save checkpoint + metadata."""
    started = time.time()
    train_ds, test_ds = load_datasets(config)
    input_shape = train_ds.images.shape[1:]
    model = build_model(config.model.to_dict(), input_shape, len(train_ds.class_names), config.seed)
    steps_per_epoch = len(train_ds) // config.batch_size
    if steps_per_epoch == 0:
        raise data_lib.DatasetError(f"{len(train_ds)} training images is fewer than one batch of {config.batch_size}")
    optimizer = make_optimizer(model, config, steps_per_epoch)
    eval_step = make_eval_step(model)
    rng = np.random.default_rng(config.seed)
    key = jax.random.key(config.seed)
    aug = dict(config.augment.to_dict())
    history = []
    for epoch in range(1, config.num_epochs + 1):
        model.train()
        order = rng.permutation(len(train_ds))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.num_epochs}", unit="batch", leave=True)
        losses, accs = [], []
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            key, sub = jax.random.split(key)
            images = augment(sub, train_ds.images[idx], **aug)
            loss, acc = train_step(model, optimizer, images, train_ds.labels[idx], config.label_smoothing)
            losses.append(loss)
            accs.append(acc)
            if step % 20 == 0 or step == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{float(np.mean(losses[-20:])):.4f}", acc=f"{float(np.mean(accs[-20:])):.4f}")
        model.eval()
        probs = predict_in_batches(eval_step, nnx.state(model), test_ds.images, config.eval_batch_size)
        report = accuracy_report(probs, test_ds.labels, test_ds.class_names)
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "train_accuracy": float(np.mean(accs)),
                "test_accuracy": report["accuracy"],
                "elapsed_s": round(time.time() - started, 1),
            }
        )
        tqdm.write(f"epoch {epoch}: train loss {history[-1]['train_loss']:.4f}, test accuracy {report['accuracy']:.4%}")
    metadata = {
        "dataset": train_ds.name,
        "class_names": list(train_ds.class_names),
        "input_shape": list(input_shape),
        "input_dtype": "uint8",
        "config_name": config.name,
        "config": config.to_dict(),
        "model_config": config.model.to_dict(),
        "eval_batch_size": config.eval_batch_size,
        "test_accuracy": report["accuracy"],
        "per_class_accuracy": report["per_class_accuracy"],
        "test_images": report["n"],
        "train_images": len(train_ds),
        "param_count": count_params(model),
        "train_time_s": round(time.time() - started, 1),
        "history": history,
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    metadata = _jsonable(metadata)
    return save_model(workdir, model, metadata)


def _jsonable(obj):
    """ConfigDicts hold tuples; JSON wants lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj):
        return _jsonable(dataclasses.asdict(obj))
    return obj
