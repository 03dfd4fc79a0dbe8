"""The plain twin on the Keras front: ``skip=False`` and ``skips_disabled``.

``skips_disabled`` equals the ``skip=False`` model with the same weights in eager calls and in
compiled ``predict`` / ``evaluate`` after they ran with the skips on, and restores the skips
(also after an exception); ``skip=False`` saves and loads; a file saved before ``skip``
existed loads with the skips on; bad ``skip`` values are refused. (Each merge string's twin
against the PyTorch front: ``test_keras_merges.py``.)
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from skipkit.keras import DenseBlock, Highway, Residual, skips_disabled  # noqa: E402

L = keras.layers
X = np.random.default_rng(0).normal(size=(4, 5, 5, 3)).astype("float32")
Y = np.random.default_rng(1).normal(size=(4, 2)).astype("float32")
SKIP_LAYERS = (Residual, DenseBlock)


def np_(t: object) -> np.ndarray:
    return keras.ops.convert_to_numpy(t)


def _model(skip: bool = True, *, plain: tuple[str, ...] = ()) -> keras.Model:
    """A conv net with a projection, a gate, a concat, two scales and a dense block; the blocks
    named in ``plain`` (all of them for ``skip=False``) are built as plain twins."""

    def on(name: str) -> dict[str, Any]:
        return {"name": name, "skip": skip and name not in plain}

    inp = keras.Input((5, 5, 3))
    h = Residual(L.Conv2D(6, 3, strides=2, padding="same"), post="relu", **on("proj"))(inp)
    h = Highway(L.Conv2D(6, 3, padding="same"), gate_bias=0.5, **on("highway"))(h)
    h = Residual(L.Conv2D(4, 3, padding="same"), merge="concat", **on("concat"))(h)
    h = Residual(L.Conv2D(10, 1), merge="layerscale", **on("layerscale"))(h)
    h = Residual(L.Conv2D(10, 1), merge="rezero_skip", **on("rezero_skip"))(h)
    h = DenseBlock([L.Conv2D(3, 1), L.Conv2D(3, 1)], **on("dblock"))(h)
    out = L.Dense(2)(L.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out)


def _nudged(model: keras.Model) -> keras.Model:
    rng = np.random.default_rng(3)
    for w in model.weights:  # off the initial values (the 1e-5 scale, the gate's bias)
        w.assign(np_(w) + rng.normal(scale=0.3, size=w.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file of ``_model()`` whose weights are off their initial values."""
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.weights.h5"
    _nudged(_model()).save_weights(path)
    return path


@pytest.fixture(scope="module")
def models(weights: Path) -> tuple[keras.Model, keras.Model]:
    """A compiled model that has run predict and evaluate with the skips on, and its
    ``skip=False`` twin, which loads the same weights file (less the shortcuts' and the gate's
    weights and the skip's factor, which it has no use for)."""
    model, twin = _model(), _model(skip=False)
    model.load_weights(weights)
    twin.load_weights(weights)
    model.compile(loss="mse")
    model.predict(X, verbose=0)
    model.evaluate(X, Y, verbose=0)
    twin.compile(loss="mse")
    return model, twin


def _close(a: Any, b: Any) -> None:
    np.testing.assert_allclose(np_(a), np_(b), rtol=1e-5, atol=1e-5)


def test_the_twin_has_no_shortcut_or_gate_weights(models: tuple[keras.Model, keras.Model]) -> None:
    model, twin = models
    assert all(not layer.skip for layer in twin.layers if isinstance(layer, SKIP_LAYERS))
    blocks = {layer.name: layer for layer in twin.layers}
    assert all(blocks[n].shortcut is None for n in ("proj", "highway", "concat", "layerscale"))
    assert blocks["highway"].merge.weights == blocks["rezero_skip"].merge.weights == []
    # the shortcut Conv2D(6, 1, strides=2) (the concat's is the identity), the gate's Dense(6)
    # and the skip's factor
    assert model.count_params() - twin.count_params() == (3 * 6 + 6) + (6 * 6 + 6) + 1
    assert twin.output_shape == model.output_shape


def test_skips_disabled_is_the_twin_eagerly_and_in_compiled_predict_and_evaluate(
    models: tuple[keras.Model, keras.Model],
) -> None:
    model, twin = models
    on = np_(model.predict(X, verbose=0))
    loss_on = model.evaluate(X, Y, verbose=0)
    plain = np_(twin(X))
    assert not np.allclose(on, plain, atol=1e-2)
    with skips_disabled(model) as same:
        assert same is model
        _close(model(X), plain)
        _close(model.predict(X, verbose=0), plain)
        assert model.evaluate(X, Y, verbose=0) == pytest.approx(twin.evaluate(X, Y, verbose=0))
    _close(model.predict(X, verbose=0), on)  # restored, in the compiled functions too
    assert model.evaluate(X, Y, verbose=0) == pytest.approx(loss_on)
    _close(model(X), on)


def test_one_layer_of_a_compiled_model_is_switched_off_in_its_predict(
    models: tuple[keras.Model, keras.Model], weights: Path
) -> None:
    """A layer passed alone: the model that traced it traces its functions again."""
    model, _ = models
    on = np_(model.predict(X, verbose=0))
    partial = _model(plain=("concat",))
    partial.load_weights(weights)
    with skips_disabled(model.get_layer("concat")):
        _close(model.predict(X, verbose=0), partial(X))
        assert all(
            layer.skip_enabled == (layer.name != "concat")
            for layer in model.layers
            if isinstance(layer, SKIP_LAYERS)
        )
    _close(model.predict(X, verbose=0), on)


def test_the_skips_come_back_after_an_exception(models: tuple[keras.Model, keras.Model]) -> None:
    model, _ = models
    on = np_(model.predict(X, verbose=0))
    with pytest.raises(KeyError), skips_disabled(model):
        model.predict(X, verbose=0)
        raise KeyError("inside the block")
    assert all(layer.skip_enabled for layer in model.layers if isinstance(layer, SKIP_LAYERS))
    _close(model.predict(X, verbose=0), on)


def test_a_twin_stays_plain_inside_and_after_skips_disabled(
    models: tuple[keras.Model, keras.Model],
) -> None:
    _, twin = models
    plain = np_(twin(X))
    with skips_disabled(twin):
        _close(twin(X), plain)
    assert not twin.get_layer("proj").skip_enabled
    with pytest.raises(ValueError, match=r"proj: built with skip=False.*Fix: build the block"):
        twin.get_layer("proj").skip_enabled = True
    with pytest.raises(ValueError, match=r"dblock: built with skip=False"):
        twin.get_layer("dblock").skip_enabled = True


def test_every_weight_of_the_twin_learns(weights: Path) -> None:
    """No weight the plain function does not read (a gate, a skip's factor) is built, so one
    SGD step moves each one (TensorFlow would warn of a missing gradient otherwise)."""
    twin = _model(skip=False)
    twin.load_weights(weights)
    twin.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [np_(w) for w in twin.trainable_weights]
    twin.fit(X, Y, epochs=1, batch_size=4, verbose=0)
    still = [
        w.path
        for b, w in zip(before, twin.trainable_weights, strict=True)
        if np.array_equal(b, np_(w))
    ]
    assert still == []


# torch and TensorFlow say so of the weights only the skips read; JAX gives them zeros
@pytest.mark.filterwarnings("ignore:Gradients do not exist for variables:UserWarning")
def test_fit_inside_skips_disabled_trains_the_twin(weights: Path) -> None:
    """After a fit with the skips on, a fit step inside the block is the twin's fit step, and
    leaves the weights only the skips read as they are."""
    model, twin = _model(), _model(skip=False)
    for m, rate in ((model, 0.0), (twin, 0.1)):
        m.load_weights(weights)
        m.compile(optimizer=keras.optimizers.SGD(rate), loss="mse")
        m.fit(X, Y, epochs=1, batch_size=4, verbose=0)  # the model keeps its train function
    model.optimizer.learning_rate.assign(0.1)  # a variable: the kept function reads it
    shortcut = np_(model.get_layer("proj").shortcut.kernel)
    with skips_disabled(model):
        model.fit(X, Y, epochs=1, batch_size=4, verbose=0)
        _close(model(X), twin(X))
    np.testing.assert_array_equal(np_(model.get_layer("proj").shortcut.kernel), shortcut)


def test_dense_block_twin_is_the_hand_written_one() -> None:
    """Each layer sees zeros for every earlier map but the last; the output keeps only the
    last layer's, as the PyTorch DenseBlock without its skips."""
    layers = [L.Dense(3), L.Dense(3), L.Dense(3)]
    twin = DenseBlock(layers, skip=False)
    x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    y = np_(twin(x))
    h = np_(layers[0](x))
    for width, layer in zip((4, 7), layers[1:], strict=True):
        h = np_(layer(np.concatenate([np.zeros((2, width), "float32"), h], -1)))
    np.testing.assert_allclose(y, np.concatenate([np.zeros((2, 10), "float32"), h], -1), atol=1e-6)
    block = DenseBlock(layers)  # the same layers, so the same weights
    with skips_disabled(block):
        _close(block(x), y)
    assert not np.allclose(np_(block(x)), y)


def test_concat_twin_keeps_the_width_with_zeros_in_the_skip_s_channels() -> None:
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 6)).astype("float32")  # channels first
    body = L.Conv2D(3, 3, strides=2, padding="same", data_format="channels_first")
    twin = Residual(body, merge="concat", skip=False)
    y = np_(twin(x))
    assert y.shape == (2, 7, 3, 3) and twin.compute_output_shape((None, 4, 6, 6)) == (None, 7, 3, 3)
    np.testing.assert_allclose(y[:, :3], np_(body(x)), atol=1e-6)
    np.testing.assert_array_equal(y[:, 3:], np.zeros((2, 4, 3, 3)))


def test_skip_false_saves_and_loads(weights: Path, tmp_path: Path) -> None:
    twin = _model(skip=False)  # not compiled: no optimizer in the file
    twin.load_weights(weights)
    twin.save(tmp_path / "twin.keras")
    loaded = keras.models.load_model(tmp_path / "twin.keras")
    _close(loaded(X), twin(X))
    assert [layer.skip for layer in loaded.layers if isinstance(layer, SKIP_LAYERS)] == [False] * 6
    assert loaded.count_params() == twin.count_params()


def _drop_skip_keys(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: _drop_skip_keys(v) for k, v in config.items() if k != "skip"}
    if isinstance(config, list):
        return [_drop_skip_keys(v) for v in config]
    return config


def test_a_file_saved_before_skip_existed_loads_with_the_skips_on(tmp_path: Path) -> None:
    model = _nudged(_model())
    model.save(tmp_path / "new.keras")
    old = tmp_path / "old.keras"  # the same file without the "skip" keys
    with zipfile.ZipFile(tmp_path / "new.keras") as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                assert b'"skip": true' in data
                data = json.dumps(_drop_skip_keys(json.loads(data))).encode()
            dst.writestr(item, data)
    loaded = keras.models.load_model(old)
    assert all(layer.skip for layer in loaded.layers if isinstance(layer, SKIP_LAYERS))
    np.testing.assert_array_equal(np_(loaded(X)), np_(model(X)))


@pytest.mark.parametrize("value", ["no", 0, None, np.bool_(False)], ids=repr)
@pytest.mark.parametrize("cls", [Residual, Highway, DenseBlock])
def test_a_skip_that_is_not_a_bool_is_refused(cls: type, value: Any) -> None:
    args = (3, 2) if cls is DenseBlock else ()
    with pytest.raises(TypeError) as info:
        cls(L.Dense(2) if cls is not DenseBlock else None, *args, skip=value, name="blk")
    assert f"blk: skip must be True or False, got {value!r}" in str(info.value)
    assert "Fix: skip=True (the default) for the skip connection, skip=False" in str(info.value)


def test_skip_false_refuses_parts_it_cannot_honour() -> None:
    with pytest.raises(ValueError, match=r"r: skip=False .* shortcut= is a Dense layer.*Fix"):
        Residual(L.Dense(4), shortcut=L.Dense(4), skip=False, name="r")
    with pytest.raises(TypeError, match=r"r: skip=False needs .* got Multiply\. Fix: .*'mul'"):
        Residual(L.Dense(4), merge=L.Multiply(), skip=False, name="r")
    foreign = Residual(L.Dense(4), merge=L.Multiply(), name="r")
    foreign(np.ones((2, 4), "float32"))
    with pytest.raises(TypeError, match=r"skips_disabled: r merges with a Multiply.*Fix"):
        with skips_disabled(foreign):
            pass
    assert foreign.skip_enabled
    with pytest.raises(TypeError, match=r"takes a Keras model or layer, got str"):
        with skips_disabled("model"):  # type: ignore[type-var]
            pass
