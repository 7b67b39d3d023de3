"""train.model / train.train steps / train.checkpoint, in process on tiny networks."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import smoke
from train.checkpoint import ModelError, checkpoint_digest, load_model, save_model
from train.model import build_model, conv_kernel_init, count_params, make_predict_fn, max_pool_2x2
from train.predictor import load_predictor
from train.train import make_optimizer, train_step

TINY = {"widths": (4, 8), "convs_per_block": 1, "dense": 16, "dropout_conv": 0.0, "dropout_dense": 0.0}


def _batch(shape, n, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, num_classes, n).astype(np.int32)


@pytest.mark.parametrize(
    ("shape", "classes"),
    [((28, 28, 1), 10), ((32, 32, 3), 5), ((18, 26, 1), 3)],
    ids=["28x28x1", "32x32x3", "18x26x1"],
)
def test_output_shape(shape, classes):
    model = build_model(TINY, shape, classes)
    model.eval()
    images, _ = _batch(shape, 3, classes)
    # One jitted program, not one compile per op: the three shapes take 8.6 s instead of 11.9.
    logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(images))
    assert logits.shape == (3, classes)
    assert np.isfinite(np.asarray(logits)).all()
    assert count_params(model) > 0


def test_conv_kernels_are_flaxs_default_initialisation_bit_for_bit():
    """conv_kernel_init draws a (fan_in, out) matrix and reshapes it, only because XLA compiles that faster: the
    numbers are LeCun normal's for the kernel's own shape (models trained before it reproduce)."""
    key = jax.random.key(5)
    # shapes whose 4-D draw compiles in ~1 s here; smaller ones, (3, 3, 8, 16) say, take 5-7 s
    for shape in [(3, 3, 16, 32), (3, 3, 32, 64)]:
        ours = np.asarray(conv_kernel_init(key, shape))
        np.testing.assert_array_equal(ours, np.asarray(nnx.initializers.lecun_normal()(key, shape)))
        assert ours.shape == shape and ours.std() > 0


def test_predict_fn_probabilities():
    model = build_model(TINY, (28, 28, 1), 10, seed=1)
    predict, state = make_predict_fn(model)
    images, _ = _batch((28, 28, 1), 4, 10)
    probs = np.asarray(predict(state, images))  # uint8 straight in, no normalisation by the caller
    assert probs.shape == (4, 10) and probs.dtype == np.float32
    assert (probs >= 0).all() and (probs <= 1).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    as_float = np.asarray(predict(state, images.astype(np.float32)))
    np.testing.assert_allclose(as_float, probs, atol=1e-6)
    # eval mode: the same picture gives the same answer whatever else is in the batch
    single = np.asarray(predict(state, np.concatenate([images[:1], np.zeros_like(images[1:])])))
    np.testing.assert_allclose(single[0], probs[0], atol=1e-6)


def test_flip_predict_averages_each_image_with_its_mirror():
    model = _trained_tiny_model()
    images, _ = _batch((28, 28, 1), 5, 4, seed=6)
    mirrored = images[:, :, ::-1]
    predict, state = make_predict_fn(model, temperature=0.5, flip=True)
    probs = np.asarray(predict(state, images))
    logits = 0.5 * (np.asarray(model(jnp.asarray(images))) + np.asarray(model(jnp.asarray(mirrored))))
    expected = np.exp(logits / 0.5 - (logits / 0.5).max(-1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), atol=1e-5)
    # batch-independent like the plain function (the server pads buckets with zeros)
    single = np.asarray(predict(state, np.concatenate([images[:1], np.zeros_like(images[1:])])))
    np.testing.assert_allclose(single[0], probs[0], atol=1e-6)
    # a picture and its mirror image get the same answer; without flips they need not
    np.testing.assert_allclose(np.asarray(predict(state, mirrored)), probs, atol=1e-5)
    plain, plain_state = make_predict_fn(model, temperature=0.5)
    assert not np.allclose(np.asarray(plain(plain_state, images)), probs, atol=1e-4)
    # the temperature changes confidences, never the argmax
    hot, hot_state = make_predict_fn(model, temperature=2.0, flip=True)
    assert np.array_equal(np.asarray(hot(hot_state, images)).argmax(-1), probs.argmax(-1))


def test_load_predictor_applies_the_recorded_temperature_and_flip(saved, tmp_path):
    model, model_dir, written = saved
    _copy(model_dir, tmp_path / "m")
    meta = {**written, "temperature": 0.7, "test_time_flip": True}
    (tmp_path / "m" / "metadata.json").write_text(json.dumps(meta))
    images, _ = _batch((28, 28, 1), 6, 4, seed=7)
    predict, state = make_predict_fn(model, 0.7, flip=True)
    np.testing.assert_array_equal(load_predictor(tmp_path / "m")(images), np.asarray(predict(state, images)))
    # a model saved before either existed: temperature 1, no flip
    predict, state = make_predict_fn(model)
    np.testing.assert_array_equal(load_predictor(model_dir)(images), np.asarray(predict(state, images)))


@pytest.mark.parametrize("shape", [(2, 28, 28, 3), (2, 7, 7, 4), (1, 15, 9, 2)], ids=["even", "7x7", "odd"])
def test_training_pool_equals_serving_pool(shape):
    """Training pools with a reshape (fast backward), serving with max_pool: same values, odd edges dropped."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(max_pool_2x2(x)), np.asarray(nnx.max_pool(x, (2, 2), strides=(2, 2))))


def _tiny_config(num_epochs=1):
    config = smoke.get_config()
    config.num_epochs = num_epochs
    return config


def test_train_steps_lower_the_loss():
    model = build_model(TINY, (28, 28, 1), 10, seed=0)
    optimizer = make_optimizer(model, _tiny_config(), steps_per_epoch=30)
    images, labels = _batch((28, 28, 1), 32, 10, seed=2)
    model.train()
    losses = []
    for _ in range(12):
        loss, acc = train_step(model, optimizer, images, labels)
        losses.append(float(loss))
        assert 0.0 <= float(acc) <= 1.0
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses
    assert min(losses[-3:]) < 0.9 * losses[0], losses


def _trained_tiny_model():
    model = build_model(TINY, (28, 28, 1), 4, seed=3)
    optimizer = make_optimizer(model, _tiny_config(), steps_per_epoch=10)
    images, labels = _batch((28, 28, 1), 16, 4, seed=4)
    model.train()
    for _ in range(2):  # moves params and BatchNorm statistics away from their initial values
        train_step(model, optimizer, images, labels)
    model.eval()
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = _trained_tiny_model()
    model_dir = tmp_path_factory.mktemp("tiny-model")
    meta = {"model_config": TINY, "input_shape": [28, 28, 1], "class_names": ["a", "b", "c", "d"], "test_accuracy": 0.5}
    written = save_model(model_dir, model, json.loads(json.dumps(meta)))
    return model, model_dir, written


def test_checkpoint_round_trip_is_bit_identical(saved):
    model, model_dir, written = saved
    assert written["checkpoint_sha256"] == checkpoint_digest(model_dir / "checkpoint")
    assert json.loads((model_dir / "metadata.json").read_text()) == written
    loaded, meta = load_model(model_dir)
    assert meta == written
    images, _ = _batch((28, 28, 1), 8, 4, seed=5)
    model.eval()
    expected = np.asarray(model(jnp.asarray(images)))
    got = np.asarray(loaded(jnp.asarray(images)))
    assert np.array_equal(expected, got)
    fresh = build_model(TINY, (28, 28, 1), 4, seed=0)
    fresh.eval()
    assert not np.array_equal(np.asarray(fresh(jnp.asarray(images))), got)  # restore really restored
    # the loaded model comes back in eval mode (dropout/BatchNorm deterministic)
    for _, module in nnx.iter_modules(loaded):
        if isinstance(module, nnx.BatchNorm):
            assert module.use_running_average
        if isinstance(module, nnx.Dropout):
            assert module.deterministic


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_load_model_rejects_modified_checkpoint(saved, tmp_path):
    model_dir = _copy(saved[1], tmp_path / "m")
    load_model(model_dir)  # the copy itself is fine
    files = sorted(p for p in (model_dir / "checkpoint").rglob("*") if p.is_file())
    victim = max(files, key=lambda p: p.stat().st_size)
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    victim.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="digest differs from metadata.json"):
        load_model(model_dir)


def test_load_model_rejects_wrong_digest_in_metadata(saved, tmp_path):
    model_dir = _copy(saved[1], tmp_path / "m")
    meta = json.loads((model_dir / "metadata.json").read_text())
    meta["checkpoint_sha256"] = "0" * 64
    (model_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="digest differs"):
        load_model(model_dir)


def test_load_model_missing_metadata(saved, tmp_path):
    model_dir = _copy(saved[1], tmp_path / "m")
    (model_dir / "metadata.json").unlink()
    with pytest.raises(ModelError, match=r"metadata\.json not found"):
        load_model(model_dir)


def test_load_model_missing_checkpoint_or_bad_json(saved, tmp_path):
    model_dir = _copy(saved[1], tmp_path / "m")
    (model_dir / "metadata.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(model_dir)
    other = tmp_path / "only-meta"
    other.mkdir()
    (other / "metadata.json").write_text((saved[1] / "metadata.json").read_text())
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_model(other)
