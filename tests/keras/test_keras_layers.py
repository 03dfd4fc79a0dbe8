"""skipkit.keras layers: exact merge values, shortcut planning, errors, model styles, fit."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import skipkit  # noqa: E402
from skipkit.keras import (  # noqa: E402
    Concat,
    DenseBlock,
    Highway,
    Residual,
    Scale,
    ShapeMismatchError,
    plan_shortcut,
)

L = keras.layers


def np_(t: object) -> np.ndarray:
    return keras.ops.convert_to_numpy(t)


def dense(units: int, fan_in: int, seed: int, **kw: object) -> keras.layers.Dense:
    """A built Dense layer with known weights."""
    layer = L.Dense(units, **kw)
    layer.build((None, fan_in))
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=(fan_in, units)), rng.normal(size=(units,))])
    return layer


def affine(layer: keras.layers.Dense, x: np.ndarray) -> np.ndarray:
    w, b = layer.get_weights()
    return x @ w + b


X = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")


# --- exact values -------------------------------------------------------------------------


def test_identity_add_is_body_plus_x() -> None:
    body = dense(4, 4, seed=0)
    block = Residual(body)
    y = np_(block(X))
    assert block.shortcut is None
    np.testing.assert_allclose(y, affine(body, X) + X, rtol=1e-5, atol=1e-5)


def test_projection_add_uses_a_dense_shortcut() -> None:
    body = dense(6, 4, seed=0)
    block = Residual(body)
    block.build((None, 4))
    assert isinstance(block.shortcut, L.Dense) and block.shortcut.units == 6
    y = np_(block(X))
    np.testing.assert_allclose(y, affine(body, X) + affine(block.shortcut, X), rtol=1e-5, atol=1e-5)


def test_post_activation_follows_the_merge() -> None:
    body = dense(4, 4, seed=0)
    y = np_(Residual(body, post="relu")(X))
    np.testing.assert_allclose(y, np.maximum(affine(body, X) + X, 0), rtol=1e-5, atol=1e-5)


def test_concat_puts_the_branch_first_on_the_last_axis() -> None:
    body = dense(2, 4, seed=0)
    block = Residual(body, merge="concat")
    y = np_(block(X))
    assert block.shortcut is None and y.shape == (3, 6)
    np.testing.assert_allclose(y, np.concatenate([affine(body, X), X], -1), rtol=1e-5, atol=1e-5)


def test_gate_with_known_weights() -> None:
    body = dense(4, 4, seed=0)
    block = Highway(body)
    block.build((None, 4))
    gate = block.merge.transform
    np.testing.assert_allclose(gate.get_weights()[1], np.full(4, -2.0))
    rng = np.random.default_rng(5)
    gate.set_weights([rng.normal(size=(4, 4)), rng.normal(size=(4,))])
    t = 1.0 / (1.0 + np.exp(-affine(gate, X)))
    expected = t * affine(body, X) + (1 - t) * X
    np.testing.assert_allclose(np_(block(X)), expected, rtol=1e-5, atol=1e-5)


def test_gate_bias_is_configurable() -> None:
    block = Highway(L.Dense(4), gate_bias=-1.0)
    block.build((None, 4))
    np.testing.assert_allclose(block.merge.transform.get_weights()[1], np.full(4, -1.0))
    assert isinstance(Residual(L.Dense(4), merge="gate").merge, type(None))


def test_rezero_is_identity_at_init_then_scales_the_branch() -> None:
    body = dense(4, 4, seed=0)
    block = Residual(body, merge="rezero")
    np.testing.assert_array_equal(np_(block(X)), X)
    assert isinstance(block.merge, Scale) and block.merge.alpha.shape == ()
    block.merge.alpha.assign(0.5)
    np.testing.assert_allclose(np_(block(X)), X + 0.5 * affine(body, X), rtol=1e-5, atol=1e-5)


def test_scale_per_channel_channels_first() -> None:
    x = np.ones((2, 3, 4, 4), "float32")
    merge = Scale(1.0, per_channel=True, data_format="channels_first")
    merge.build([x.shape, x.shape])
    merge.alpha.assign(np.array([0.0, 1.0, 2.0], "float32"))
    y = np_(merge([x, x]))
    np.testing.assert_allclose(y[:, :, 0, 0], np.tile([1.0, 2.0, 3.0], (2, 1)))


def test_merge_layers_can_be_passed_directly() -> None:
    body = dense(4, 4, seed=0)
    y = np_(Residual(body, merge=L.Multiply())(X))
    np.testing.assert_allclose(y, affine(body, X) * X, rtol=1e-5, atol=1e-5)


def test_custom_shortcut_layer() -> None:
    body = dense(4, 4, seed=0)
    y = np_(Residual(body, shortcut=L.Rescaling(2.0))(X))
    np.testing.assert_allclose(y, affine(body, X) + 2 * X, rtol=1e-5, atol=1e-5)


def test_list_body_becomes_sequential() -> None:
    block = Residual([L.Dense(8, activation="relu"), L.Dense(4)])
    assert isinstance(block.body, keras.Sequential)
    assert block(X).shape == (3, 4)


def test_dense_block_exact_values() -> None:
    d0, d1 = dense(2, 4, seed=0), dense(2, 6, seed=1)
    block = DenseBlock([d0, d1], growth=2)
    h0 = affine(d0, X)
    h1 = affine(d1, np.concatenate([X, h0], -1))
    np.testing.assert_allclose(np_(block(X)), np.concatenate([X, h0, h1], -1), rtol=1e-5, atol=1e-5)


# --- shortcut planning --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_shape", "body", "out_shape", "strides"),
    [
        ((8, 8, 3), L.Conv2D(16, 3, strides=2, padding="same"), (4, 4, 16), (2, 2)),
        ((7, 7, 8), L.Conv2D(8, 3, strides=2, padding="same"), (4, 4, 8), (2, 2)),
        ((7, 9, 8), L.Conv2D(8, 3, strides=(2, 3), padding="same"), (4, 3, 8), (2, 3)),
        ((9, 4), L.Conv1D(8, 3, strides=2, padding="same"), (5, 8), (2,)),
        ((5, 6, 7, 2), L.Conv3D(4, 1, strides=2), (3, 3, 4, 4), (2, 2, 2)),
        ((8, 8, 4), L.Conv2D(4, 3, padding="valid"), (6, 6, 4), None),
        ((7, 7, 4), [L.MaxPooling2D(padding="same"), L.Conv2D(6, 1)], (4, 4, 6), (2, 2)),
        ((8, 8, 4), L.Conv2D(6, 3, padding="same"), (8, 8, 6), (1, 1)),
    ],
)
def test_conv_projection_strides(
    in_shape: tuple[int, ...], body: object, out_shape: tuple[int, ...], strides: object
) -> None:
    if strides is None:  # 8 -> 6 has no stride: a clear error instead
        with pytest.raises(ShapeMismatchError, match="no stride"):
            Residual(body).build((None, *in_shape))
        return
    block = Residual(body)
    y = block(np.ones((2, *in_shape), "float32"))
    assert tuple(y.shape) == (2, *out_shape)
    assert type(block.shortcut).__name__ == f"Conv{len(in_shape) - 1}D"
    assert block.shortcut.strides == strides and block.shortcut.kernel_size == (1,) * len(strides)


def test_sequences_project_with_dense_and_keep_variable_length() -> None:
    block = Residual(L.LSTM(6, return_sequences=True))
    inp = keras.Input((None, 4))
    assert tuple(block(inp).shape) == (None, None, 6)
    assert isinstance(block.shortcut, L.Dense)
    for steps in (3, 7):
        assert tuple(block(np.ones((2, steps, 4), "float32")).shape) == (2, steps, 6)


def test_unknown_spatial_sizes_are_probed_for_the_stride() -> None:
    block = Residual(L.Conv2D(8, 3, strides=2, padding="same"))
    assert tuple(block(keras.Input((None, None, 3))).shape) == (None, None, None, 8)
    assert block.shortcut.strides == (2, 2)
    assert tuple(block(np.ones((2, 7, 9, 3), "float32")).shape) == (2, 4, 5, 8)


def test_project_forces_a_projection_and_identity_refuses_one() -> None:
    block = Residual(L.Dense(4), shortcut="project")
    block.build((None, 4))
    assert isinstance(block.shortcut, L.Dense)
    with pytest.raises(ShapeMismatchError, match="shortcut='auto'"):
        Residual(L.Dense(5), shortcut="identity").build((None, 4))


def test_concat_downsamples_the_skip_keeping_its_channels() -> None:
    block = Residual(L.Conv2D(8, 3, strides=2, padding="same"), merge="concat")
    y = block(np.ones((2, 7, 7, 3), "float32"))
    assert tuple(y.shape) == (2, 4, 4, 11)
    assert block.shortcut.filters == 3 and block.shortcut.strides == (2, 2)


def test_channels_first_is_taken_from_the_body() -> None:
    body = L.Conv2D(8, 3, strides=2, padding="same", data_format="channels_first")
    block = Residual(body, merge="gate")
    y = block(np.ones((2, 3, 7, 7), "float32"))
    assert tuple(y.shape) == (2, 8, 4, 4)
    assert block.shortcut.data_format == "channels_first"
    cat = Residual(L.Conv2D(8, 3, padding="same", data_format="channels_first"), merge="concat")
    assert tuple(cat(np.ones((2, 3, 5, 5), "float32")).shape) == (2, 11, 5, 5)
    assert isinstance(cat.merge, Concat) and cat.merge.axis == 1


def test_plan_shortcut_directly() -> None:
    assert plan_shortcut((None, 4), (None, 4)) is None
    assert plan_shortcut((None, 4), (None, 6)).units == 6
    conv = plan_shortcut((None, 9, 9, 2), (None, 3, 3, 4), spatial=True)
    assert conv.strides == (3, 3) and conv.filters == 4


# --- errors -------------------------------------------------------------------------------


def test_error_is_the_core_class_and_names_layer_shapes_and_fix() -> None:
    assert ShapeMismatchError is skipkit.ShapeMismatchError
    block = Residual(L.LSTM(8), name="seq_skip")
    with pytest.raises(ShapeMismatchError) as info:
        block(keras.Input((5, 4)))
    err = info.value
    text = str(err)
    assert isinstance(err, ValueError)
    assert "seq_skip" in text and "rank" in text
    assert "(None, 5, 4)" in text and "(None, 8)" in text and "Fix:" in text
    assert err.path == "seq_skip"
    assert err.skip_shape == (None, 5, 4) and err.branch_shape == (None, 8)


@pytest.mark.parametrize(
    ("body", "in_shape", "match"),
    [
        (L.Cropping1D((1, 1)), (6, 4), "sequence length"),
        (L.UpSampling2D(), (4, 4, 2), "grows from 4 to 8"),
        (L.Resizing(4, 4), (None, None, 3), "known on one side"),
        (L.Cropping1D((1, 1)), (None, 4), "sequence length.*probe"),
    ],
)
def test_unfixable_shapes_raise(body: object, in_shape: tuple[int | None, ...], match: str) -> None:
    with pytest.raises(ShapeMismatchError, match=match):
        Residual(body)(keras.Input(in_shape))


def test_wrong_custom_shortcut_is_reported() -> None:
    with pytest.raises(ShapeMismatchError, match="shortcut layer output"):
        Residual(L.Dense(6), shortcut=L.Dense(5)).build((None, 4))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown merge 'sum'"):
        Residual(L.Dense(4), merge="sum")
    with pytest.raises(ValueError, match="unknown shortcut"):
        Residual(L.Dense(4), shortcut="pad")
    with pytest.raises(TypeError, match="Keras layer"):
        Residual(lambda x: x)
    with pytest.raises(ValueError, match="data_format"):
        Residual(L.Dense(4), data_format="NCHW")
    with pytest.raises(TypeError, match="needs all three"):
        DenseBlock(lambda c, g: L.Dense(g), num_layers=2)


def test_dense_block_errors() -> None:
    with pytest.raises(ShapeMismatchError, match=r"block_layers\[0\].*every dim"):
        DenseBlock([L.Conv2D(4, 3, strides=2, padding="same")]).build((None, 8, 8, 3))
    with pytest.raises(ShapeMismatchError, match="not growth=4"):
        DenseBlock([L.Dense(3)], growth=4).build((None, 5))


# --- DenseBlock ---------------------------------------------------------------------------


def test_dense_block_default_layers_and_make_layer() -> None:
    x = np.ones((2, 6, 6, 5), "float32")
    block = DenseBlock(num_layers=3, growth=4)
    assert tuple(block(x).shape) == (2, 6, 6, 17)
    seen: list[int] = []

    def make(c: int, g: int) -> keras.layers.Layer:
        seen.append(c)
        return L.Conv2D(g, 3, padding="same")

    assert tuple(DenseBlock(make, 2, 3)(x).shape) == (2, 6, 6, 11)
    assert seen == [5, 8]
    vectors = DenseBlock(num_layers=2, growth=3)
    assert tuple(vectors(np.ones((4, 5), "float32")).shape) == (4, 11)


def test_dense_block_channels_first() -> None:
    block = DenseBlock(num_layers=2, growth=4, data_format="channels_first")
    assert tuple(block(np.ones((2, 3, 5, 5), "float32")).shape) == (2, 11, 5, 5)


# --- model styles and training ------------------------------------------------------------


def _regression(n: int = 128, features: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2]).astype("float32")
    return x, y


def _fit_loss(model: keras.Model) -> tuple[float, float]:
    x, y = _regression()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    losses = model.fit(x, y, epochs=8, batch_size=32, verbose=0).history["loss"]
    return losses[0], losses[-1]


def test_sequential_fit_reduces_loss() -> None:
    model = keras.Sequential(
        [
            keras.Input((6,)),
            Residual(L.Dense(16, activation="relu")),
            Highway(L.Dense(16, activation="relu")),
            Residual(L.Dense(16, activation="relu"), merge="rezero"),
            DenseBlock([L.Dense(4, activation="relu"), L.Dense(4, activation="relu")]),
            L.Dense(1),
        ]
    )
    first, last = _fit_loss(model)
    assert last < 0.7 * first


def test_functional_fit_reduces_loss() -> None:
    inp = keras.Input((6,))
    h = Residual([L.Dense(16, activation="relu"), L.Dense(16)], post="relu")(inp)
    h = Residual(L.Dense(8, activation="relu"), merge="concat")(h)
    model = keras.Model(inp, L.Dense(1)(h))
    assert tuple(model.layers[2].output.shape) == (None, 24)
    first, last = _fit_loss(model)
    assert last < 0.7 * first


class TwoBlockModel(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = Residual(L.Dense(16, activation="relu"))
        self.block2 = Highway(L.Dense(16, activation="relu"))
        self.head = L.Dense(1)

    def call(self, x: object) -> object:
        return self.head(self.block2(self.block1(x)))


def test_subclassed_model_fit_reduces_loss() -> None:
    model = TwoBlockModel()
    first, last = _fit_loss(model)
    assert last < 0.7 * first
    # the projection and the gate are trained too
    assert len(model.trainable_weights) == 2 + 2 + 2 + 2 + 2


def test_training_flag_reaches_the_body() -> None:
    block = Residual(L.Dropout(0.5), merge="add")
    x = np.ones((4, 8), "float32")
    np.testing.assert_array_equal(np_(block(x, training=False)), 2 * x)
    assert not np.allclose(np_(block(x, training=True)), 2 * x)


def test_core_does_not_import_keras(tmp_path: object) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import skipkit\n"
        "assert 'keras' not in sys.modules, 'skipkit imported keras'\n"
        "sys.modules['keras'] = None\n"
        "try:\n"
        "    import skipkit.keras\n"
        "except ImportError as err:\n"
        "    assert 'pip install \"skipkit[keras]\"' in str(err), err\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
