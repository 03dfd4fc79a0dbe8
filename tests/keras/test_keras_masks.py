"""Masks through the skipkit Keras layers, and ``post=`` functions.

Seed 000's LSTM case with variable-length input: a padded batch must give, on its valid steps,
exactly what the unpadded sequences give, as a plain Keras ``Add`` skip does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from skipkit.keras import DenseBlock, Highway, Residual  # noqa: E402

L = keras.layers
T, PAD, F = 5, 3, 10
PAD_VALUE = 2.0
SEQ = np.random.default_rng(0).normal(size=(2, T, F)).astype("float32")


def np_(t: object) -> np.ndarray:
    return keras.ops.convert_to_numpy(t)


def padded_vs_unpadded(blocks: list[keras.layers.Layer]) -> tuple[float, float]:
    """The same model on the sequences and on them padded with PAD steps before and after.

    Returns the largest difference on the valid steps of the output of ``blocks``, and of a
    final ``LSTM(1)``'s value. The pad value is not zero: zero steps leave a zero-bias LSTM's
    state at zero, which would hide a lost mask.
    """
    inp = keras.Input((None, F))
    h = L.Masking(PAD_VALUE)(inp)
    for block in blocks:
        h = block(h)
    model = keras.Model(inp, [h, L.LSTM(1)(h)])
    pad = np.full((2, PAD, F), PAD_VALUE, "float32")
    steps, last = model.predict(SEQ, verbose=0)
    steps_pad, last_pad = model.predict(np.concatenate([pad, SEQ, pad], axis=1), verbose=0)
    return (
        float(np.abs(steps_pad[:, PAD : PAD + T] - steps).max()),
        float(np.abs(last_pad - last).max()),
    )


def test_plain_keras_add_reference_is_exact() -> None:
    lstm = L.LSTM(8, return_sequences=True)
    add = L.Add()

    class Block(L.Layer):  # the hand-written skip: Dense shortcut + LSTM, joined by Add
        def __init__(self) -> None:
            super().__init__()
            self.supports_masking = True
            self.proj = L.Dense(8)

        def call(self, x: object, mask: object = None) -> object:
            return add([self.proj(x), lstm(x, mask=mask)])

    steps, last = padded_vs_unpadded([Block()])
    assert steps < 1e-6 and last < 1e-6


@pytest.mark.parametrize(
    "make",
    [
        lambda: [Residual(L.LSTM(8, return_sequences=True)) for _ in range(2)],
        lambda: [Residual([L.LSTM(8, return_sequences=True), L.Dense(8)], post="relu")],
        lambda: [Residual(L.LSTM(8, return_sequences=True), merge="concat")],
        lambda: [Residual(L.LSTM(10, return_sequences=True), merge="rezero")],
        lambda: [Highway(L.LSTM(8, return_sequences=True))],
        lambda: [DenseBlock(lambda c, g: L.LSTM(g, return_sequences=True), 2, 4)],
        lambda: [
            Residual(L.LSTM(8, return_sequences=True), merge="concat", skip=False),
            DenseBlock(lambda c, g: L.LSTM(g, return_sequences=True), 2, 4, skip=False),
        ],
    ],
    ids=["residual-x2", "sequential-body", "concat", "rezero", "highway", "denseblock", "plain"],
)
def test_padded_equals_unpadded_on_valid_steps(make: object) -> None:
    steps, last = padded_vs_unpadded(make())  # type: ignore[operator]
    assert steps < 1e-5, f"per-step outputs differ by {steps}"
    assert last < 1e-5, f"the final LSTM differs by {last} (the mask did not pass on)"


def test_mask_passes_on_and_is_dropped_after_downsampling() -> None:
    block = Residual(L.LSTM(4, return_sequences=True))
    block.build((None, T, F))
    mask = np.array([[True] * T, [False] * 2 + [True] * (T - 2)])
    np.testing.assert_array_equal(np_(block.compute_mask(SEQ, mask)), mask)
    conv = Residual(L.Conv1D(4, 3, strides=2, padding="same"))
    conv.build((None, 8, F))
    assert conv.compute_mask(np.zeros((2, 8, F), "float32"), np.ones((2, 8), bool)) is None


# --- post= functions -------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="skipkit_tests")
def twice_relu(x: object) -> object:
    return 2.0 * keras.ops.relu(x)


X = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")


@pytest.mark.parametrize(
    ("post", "ref"),
    [
        (keras.activations.relu, lambda y: np.maximum(y, 0)),
        (twice_relu, lambda y: 2 * np.maximum(y, 0)),
        ("skipkit_tests>twice_relu", lambda y: 2 * np.maximum(y, 0)),
    ],
    ids=["keras-activation", "registered", "registered-name"],
)
def test_post_function_applies_and_round_trips(post: object, ref: object, tmp_path: Path) -> None:
    body = L.Dense(6)
    inp = keras.Input((6,))
    model = keras.Model(inp, Residual(body, post=post)(inp))
    y = model.predict(X, verbose=0)
    np_ref = ref(X @ body.kernel.numpy() + body.bias.numpy() + X)  # type: ignore[operator]
    np.testing.assert_allclose(y, np_ref, rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(X, verbose=0), y, rtol=1e-6, atol=1e-6)


def test_unregistered_post_function_runs_but_refuses_to_save(tmp_path: Path) -> None:
    def my_act(x: object) -> object:
        return keras.ops.tanh(x)

    inp = keras.Input((6,))
    model = keras.Model(inp, Residual(L.Dense(6), post=my_act, name="blk")(inp))
    assert np.all(np.abs(model.predict(X, verbose=0)) < 1)
    msg = r"blk: post='my_act' is a plain function.*register_keras_serializable"
    with pytest.raises(ValueError, match=msg):
        model.save(tmp_path / "m.keras")


def test_post_rejects_a_non_callable() -> None:
    with pytest.raises(TypeError, match="post must be an activation name, a function"):
        Residual(L.Dense(4), post=3)  # type: ignore[arg-type]
