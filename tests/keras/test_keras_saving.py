"""skipkit.keras layers save and load: get_config / from_config and ``.keras`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from skipkit.keras import (  # noqa: E402
    DenseBlock,
    Film,
    Gate,
    Highway,
    Mul,
    Residual,
    Scale,
    TanhGate,
    WeightedSum,
)

L = keras.layers


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


def _roundtrip(model: keras.Model, x: np.ndarray, tmp_path: Path) -> keras.Model:
    before = _predict(model, x)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(_predict(loaded, x), before, rtol=1e-6, atol=1e-6)
    return loaded


def _nudge(model: keras.Model) -> None:
    """Move every weight off its initial value (zeros for ReZero's alpha, -2 for the gate)."""
    rng = np.random.default_rng(3)
    for w in model.weights:
        w.assign(w.numpy() + rng.normal(scale=0.1, size=w.shape).astype(w.dtype))


def test_functional_conv_model_roundtrip(tmp_path: Path) -> None:
    inp = keras.Input((9, 9, 3))
    h = Residual(L.Conv2D(8, 3, strides=2, padding="same"), post="relu")(inp)  # 1x1 s2 skip
    h = Highway(L.Conv2D(8, 3, padding="same"), gate_bias=-1.0)(h)
    h = Residual([L.BatchNormalization(), L.Conv2D(8, 3, padding="same")], merge="rezero")(h)
    h = Residual(L.Conv2D(4, 3, padding="same"), merge="concat")(h)
    h = DenseBlock(num_layers=2, growth=4)(h)
    h = DenseBlock(lambda c, g: L.Conv2D(g, 3, padding="same"), 2, 3)(h)
    h = Residual(L.Conv2D(6, 1), shortcut=L.Conv2D(6, 1, use_bias=False), merge=Scale(0.5))(h)
    out = L.Dense(2)(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    _nudge(model)
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 3)).astype("float32")
    loaded = _roundtrip(model, x, tmp_path)
    highway = next(layer for layer in loaded.layers if isinstance(layer, Highway))
    assert highway.gate_bias == -1.0 and isinstance(highway.merge, Gate)
    assert [type(layer).__name__ for layer in loaded.layers] == [
        type(layer).__name__ for layer in model.layers
    ]


def test_sequential_rnn_model_roundtrip(tmp_path: Path) -> None:
    model = keras.Sequential(
        [
            keras.Input((None, 5)),
            Residual(L.LSTM(8, return_sequences=True)),
            Residual(L.GRU(8, return_sequences=True), merge="gate"),
            L.LSTM(2),
        ]
    )
    _nudge(model)
    x = np.random.default_rng(0).normal(size=(3, 7, 5)).astype("float32")
    _roundtrip(model, x, tmp_path)


class _Net(keras.Model):
    def __init__(self, width: int = 8, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.block = Residual(L.Dense(width, activation="relu"), merge="rezero")
        self.dense = DenseBlock([L.Dense(3), L.Dense(3)])
        self.head = L.Dense(1)

    def call(self, x: object) -> object:
        return self.head(self.dense(self.block(x)))

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "width": self.width}


def test_subclassed_model_roundtrip(tmp_path: Path) -> None:
    keras.saving.get_custom_objects()["_Net"] = _Net
    try:
        model = _Net()
        x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
        model(x)
        _nudge(model)
        _roundtrip(model, x, tmp_path)
    finally:
        del keras.saving.get_custom_objects()["_Net"]


@pytest.mark.parametrize(
    "layer",
    [
        Residual(L.Dense(4), shortcut="project", merge="concat", post="tanh", name="r"),
        Residual(L.Dense(4), shortcut=L.Dense(4), merge=L.Multiply(), post=L.ReLU()),
        Residual(L.Conv1D(4, 3, padding="same", data_format="channels_first"), merge="gate"),
        Highway([L.Dense(4), L.ReLU()], gate_bias=-3.0),
        DenseBlock([L.Dense(2), [L.Dense(2), L.ReLU()]], growth=2),
        DenseBlock(num_layers=3, growth=2, bn_size=2, data_format="channels_first"),
    ],
    ids=["strings", "layers", "channels_first", "highway", "dense_list", "dense_default"],
)
def test_config_roundtrip(layer: keras.layers.Layer) -> None:
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is type(layer) and again.get_config() == config


def test_registered_names() -> None:
    for cls in (Residual, Highway, DenseBlock, Gate, Scale, Mul, Film, TanhGate, WeightedSum):
        assert keras.saving.get_registered_name(cls) == f"skipkit>{cls.__name__}"


def test_unbuilt_make_layer_block_cannot_be_saved() -> None:
    with pytest.raises(ValueError, match="once built"):
        DenseBlock(lambda c, g: L.Dense(g), 2, 2).get_config()
