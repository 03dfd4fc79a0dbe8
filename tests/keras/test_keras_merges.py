"""The Keras front speaks the PyTorch front's merge vocabulary: every string of
``skipkit.merges.MERGES`` is the same formula, initial values and parameter shapes, checked
against ``skipkit.Residual`` with the weights copied across, on a dense body and on a conv body
in both data formats, and so is each plain twin (``skip=False``, ``skips_disabled``); initial
behaviour; ``.keras`` round trips; the refusal of other strings.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from skipkit.keras import (  # noqa: E402
    Concat,
    Film,
    Gate,
    Mul,
    Residual,
    Scale,
    TanhGate,
    WeightedSum,
    skips_disabled,
)
from skipkit.keras.merges import MERGES  # noqa: E402

L = keras.layers
HERE = Path(__file__).resolve().parent
CASES = ["dense", "conv_channels_last", "conv_channels_first"]


def np_(t: object) -> np.ndarray:
    return keras.ops.convert_to_numpy(t)


def _to_keras(x: np.ndarray, case: str) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N, H, W, C)`` for channels last; anything else as it is."""
    return np.transpose(x, (0, 2, 3, 1)) if case == "conv_channels_last" else x


def _keras_block(name: str, case: str, *, skip: bool = True) -> Residual:
    """The Keras twin of ``torch_reference.residual``, built for the case's input."""
    if case == "dense":
        body, shape = L.Dense(6, activation="tanh"), (6,)
    else:
        fmt = case.removeprefix("conv_")
        body = L.Conv2D(4, 3, padding="same", activation="tanh", data_format=fmt)
        shape = (5, 5, 4) if fmt == "channels_last" else (4, 5, 5)
    block = Residual(body, merge=name, skip=skip)
    block.build((None, *shape))
    return block


# --- the torch twin, from an interpreter of its own (skipped where torch is not installed) ---


@pytest.fixture(scope="module")
def torch_ref(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """``torch_reference.py``'s arrays: skipkit.Residual's parameters, inputs and outputs."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("the reference needs PyTorch")
    path = tmp_path_factory.mktemp("torch") / "reference.npz"
    run = subprocess.run(
        [sys.executable, str(HERE / "torch_reference.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(HERE.parents[1] / "src")},
    )
    assert run.returncode == 0, run.stderr
    with np.load(path) as arrays:
        return dict(arrays)


def _params(ref: dict[str, np.ndarray], name: str, case: str, kind: str) -> dict[str, np.ndarray]:
    """torch's ``kind`` (``"init"``: the merge's, ``"param"``: the block's) parameters by name."""
    prefix = f"{name}:{case.split('_')[0]}:{kind}:"
    return {k.removeprefix(prefix): v for k, v in ref.items() if k.startswith(prefix)}


def _kernel(w: np.ndarray, keras_shape: tuple[int, ...]) -> np.ndarray:
    """A torch ``Linear`` weight ``(O, I)`` or ``ConvNd`` weight ``(O, I, *k)`` as the Keras
    kernel ``(I, O)`` / ``(*k, I, O)``."""
    if w.ndim == 2:
        return w.T
    return np.transpose(w, (*range(2, w.ndim), 1, 0)).reshape(keras_shape)


def _keras_shape(name: str, t_shape: tuple[int, ...], keras_rank: int) -> tuple[int, ...]:
    """The Keras shape of a torch parameter: a ``Linear`` / 1x1 conv weight ``(O, I, *k)`` is a
    Dense kernel ``(I, O)`` or a conv kernel ``(*k, I, O)``; everything else is the same."""
    if name != "transform.weight":
        return t_shape
    out, inp, *k = t_shape
    return (inp, out) if keras_rank == 2 else (*k, inp, out)


def _merge_pairs(
    k_merge: keras.layers.Layer, params: dict[str, np.ndarray]
) -> list[tuple[str, np.ndarray, Any]]:
    """``(name, torch value, Keras variable)`` for every torch merge parameter: all of them."""
    where = {
        "alpha": lambda: k_merge.alpha,
        "weights": lambda: k_merge.mix,
        "transform.weight": lambda: k_merge.transform.kernel,
        "transform.bias": lambda: k_merge.transform.bias,
    }
    assert len(params) == len(k_merge.weights), (list(params), k_merge.weights)
    return [(n, value, where[n]()) for n, value in params.items()]


def _assign(var: Any, name: str, value: np.ndarray) -> None:
    is_kernel = name in ("weight", "transform.weight")
    var.assign(_kernel(value, tuple(var.shape)) if is_kernel else value)


def test_the_vocabulary_is_torch_s_and_each_string_reports_torch_s_formula(
    torch_ref: dict[str, np.ndarray],
) -> None:
    torch_names = {k.removeprefix("formula:") for k in torch_ref if k.startswith("formula:")}
    assert set(MERGES) == torch_names
    for name in MERGES:
        assert _keras_block(name, "dense").merge.formula == str(torch_ref[f"formula:{name}"])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(MERGES))
def test_keras_residual_equals_torch_residual(
    name: str, case: str, torch_ref: dict[str, np.ndarray]
) -> None:
    params = _params(torch_ref, name, case, "param")
    block = _keras_block(name, case)
    _assign(block.body.kernel, "weight", params.pop("body.0.weight"))
    _assign(block.body.bias, "bias", params.pop("body.0.bias"))
    merge = {k.removeprefix("merge."): v for k, v in params.items()}
    for p_name, value, var in _merge_pairs(block.merge, merge):
        _assign(var, p_name, value)
    key = f"{name}:{case.split('_')[0]}"
    y = np_(block(_to_keras(torch_ref[f"{key}:x"], case)))
    np.testing.assert_allclose(y, _to_keras(torch_ref[f"{key}:y"], case), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(MERGES))
def test_initial_values_and_parameter_shapes_are_torch_s(
    name: str, case: str, torch_ref: dict[str, np.ndarray]
) -> None:
    init = _params(torch_ref, name, case, "init")
    block = _keras_block(name, case)
    for p_name, value, var in _merge_pairs(block.merge, init):
        assert tuple(var.shape) == _keras_shape(p_name, value.shape, len(var.shape)), p_name
        if (name, p_name) == ("gate", "transform.weight"):
            continue  # random: the same distribution is checked below
        if p_name == "transform.weight":
            value = _kernel(value, tuple(var.shape))
        np.testing.assert_array_equal(np_(var), value)


# the torch parameter each merge's plain twin reads (see Merge.without_skip), by the Keras name
PLAIN_PARAMS = {
    "rezero": {"alpha": "alpha"},
    "skipinit": {"alpha": "alpha"},
    "layerscale": {"alpha": "alpha"},
    "weighted": {"weights": "mix"},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(MERGES))
def test_keras_plain_twin_equals_torch_s_plain_twin(
    name: str, case: str, torch_ref: dict[str, np.ndarray]
) -> None:
    """``skip=False`` and ``skips_disabled`` on the same weights give what
    ``skipkit.skips_disabled`` gives on the torch block, and the twin has only the weights its
    formula reads."""
    params = _params(torch_ref, name, case, "param")
    block, twin = _keras_block(name, case), _keras_block(name, case, skip=False)
    body = {"weight": params.pop("body.0.weight"), "bias": params.pop("body.0.bias")}
    for b in (block, twin):
        _assign(b.body.kernel, "weight", body["weight"])
        _assign(b.body.bias, "bias", body["bias"])
    merge = {k.removeprefix("merge."): v for k, v in params.items()}
    for p_name, value, var in _merge_pairs(block.merge, merge):
        _assign(var, p_name, value)
    read = PLAIN_PARAMS.get(name, {})
    assert twin.shortcut is None and len(twin.merge.weights) == len(read), twin.merge.weights
    for t_name, k_name in read.items():
        getattr(twin.merge, k_name).assign(merge[t_name])
    key = f"{name}:{case.split('_')[0]}"
    x, expected = (
        _to_keras(torch_ref[f"{key}:x"], case),
        _to_keras(torch_ref[f"{key}:y_plain"], case),
    )
    np.testing.assert_allclose(np_(twin(x)), expected, rtol=1e-5, atol=1e-5)
    with skips_disabled(block):
        np.testing.assert_allclose(np_(block(x)), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np_(block(x)), expected, atol=1e-3)  # and the skip is back


def test_gate_kernel_starts_as_torch_s_uniform() -> None:
    """torch's ``nn.Linear`` / 1x1 ``nn.Conv2d`` draw ``W ~ U(±1/sqrt(C))``, as the gate here."""
    gate = Gate()
    gate.build([(None, 64), (None, 64)])
    w = np.abs(np_(gate.transform.kernel))
    assert w.max() <= 1 / 8 and w.max() > 0.95 / 8  # Glorot's bound would be 0.22


# --- what each merge does at step 0 -------------------------------------------------------

X = np.random.default_rng(2).normal(size=(3, 6)).astype("float32")


def _paths(name: str, **kw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, s, b)`` of a fresh block on ``X``."""
    block = Residual(L.Dense(6, activation="tanh"), merge=name, **kw)
    y = np_(block(X))
    s = X if block.shortcut is None else np_(block.shortcut(X))
    return y, s, np_(block.body(X))


@pytest.mark.parametrize(
    ("name", "starts_as"),
    [
        ("rezero", "skip"),
        ("skipinit", "skip"),
        ("rezero_skip", "branch"),
        ("tanh_gate", "branch"),
        ("weighted", "sum"),
        ("add", "sum"),
        ("mul", "product"),
    ],
)
def test_merges_start_as_torch_s_do(name: str, starts_as: str) -> None:
    y, s, b = _paths(name)
    expected = {"skip": s, "branch": b, "sum": s + b, "product": s * b}[starts_as]
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_layerscale_starts_close_to_one_path() -> None:
    y, s, b = _paths("layerscale")
    np.testing.assert_allclose(y, s + 1e-5 * b, rtol=1e-6, atol=1e-7)
    y, s, b = _paths("layerscale_skip")
    np.testing.assert_allclose(y, b + 1e-5 * s, rtol=1e-6, atol=1e-7)


def test_film_starts_as_the_branch_when_the_skip_is_zero() -> None:
    zero = L.Dense(6, kernel_initializer="zeros")  # a zero-initialised shortcut
    y, s, b = _paths("film", shortcut=zero)
    np.testing.assert_array_equal(s, np.zeros_like(s))
    np.testing.assert_allclose(y, b, rtol=1e-6, atol=1e-6)
    y, s, b = _paths("film")
    np.testing.assert_allclose(y, b * (1 + s), rtol=1e-5, atol=1e-5)


def test_the_strings_make_these_layers() -> None:
    kinds = {
        "mul": Mul,
        "film": Film,
        "tanh_gate": TanhGate,
        "weighted": WeightedSum,
        "rezero_skip": Scale,
        "layerscale_skip": Scale,
    }
    for name, cls in kinds.items():
        assert type(_keras_block(name, "dense").merge) is cls
    block = _keras_block("layerscale_skip", "conv_channels_first")
    assert block.merge.on == "skip" and tuple(block.merge.alpha.shape) == (4,)


def test_concat_puts_the_branch_first() -> None:
    block = Residual(L.Conv2D(3, 1, data_format="channels_first"), merge="concat")
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 5)).astype("float32")
    y = np_(block(x))
    assert y.shape == (2, 7, 5, 5)
    np.testing.assert_allclose(y[:, :3], np_(block.body(x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y[:, 3:], x)


# --- saving -------------------------------------------------------------------------------


def _roundtrip(model: keras.Model, x: np.ndarray, tmp_path: Path) -> keras.Model:
    rng = np.random.default_rng(3)
    for w in model.weights:  # off the initial values (zeros, ones, -2)
        w.assign(np_(w) + rng.normal(scale=0.1, size=w.shape).astype("float32"))
    before = np_(model(x, training=False))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np_(loaded(x, training=False)), before, rtol=1e-6, atol=1e-6)
    return loaded


@pytest.mark.parametrize("name", sorted(MERGES))
def test_every_merge_string_saves_and_loads(name: str, tmp_path: Path) -> None:
    inp = keras.Input((4, 5, 5))
    h = Residual(L.Conv2D(4, 3, padding="same", data_format="channels_first"), merge=name)(inp)
    h = L.Flatten()(h)
    h = Residual(L.Dense(h.shape[-1], activation="tanh"), merge=name)(h)
    model = keras.Model(inp, L.Dense(2)(h))
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 5)).astype("float32")
    loaded = _roundtrip(model, x, tmp_path)
    merges = [layer.merge for layer in loaded.layers if isinstance(layer, Residual)]
    assert [type(m) for m in merges] == [type(MERGES[name]("channels_first", 4))] * 2
    assert merges[0].formula == MERGES[name]("channels_first", 4).formula


@pytest.mark.parametrize(
    "layer",
    [
        Mul(),
        Film(),
        TanhGate(data_format="channels_first"),
        Scale(0.5, per_channel=True, on="skip"),
        WeightedSum(0.0, 2.0),
        Concat(axis=1),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_merge_layer_config_roundtrip(layer: keras.layers.Layer) -> None:
    config = layer.get_config()
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is type(layer) and again.get_config() == config
    assert again.formula == layer.formula
    assert keras.saving.get_registered_name(type(layer)) == f"skipkit>{type(layer).__name__}"


def test_a_concat_saved_before_branch_first_keeps_the_skip_first() -> None:
    config = Residual(L.Dense(2), merge="concat").get_config()
    assert config["concat_branch_first"] is True
    del config["concat_branch_first"]  # what a .keras file saved before held
    old = Residual.from_config(config)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    y = np_(old(x))
    np.testing.assert_allclose(y, np.concatenate([x, np_(old.body(x))], -1), rtol=1e-6)
    assert old.merge.formula == "cat([s, b], C)"
    assert old.get_config()["concat_branch_first"] is False  # and keeps it when saved again
    layer_config = Concat(axis=1).get_config()
    del layer_config["branch_first"]
    assert Concat.from_config(layer_config).branch_first is False


# --- refusals -----------------------------------------------------------------------------


def test_an_unknown_merge_string_is_refused_with_the_choices_and_the_fix() -> None:
    with pytest.raises(ValueError) as info:
        Residual(L.Dense(4), merge="tanh-gate")
    text = str(info.value)
    assert "unknown merge 'tanh-gate' (did you mean 'tanh_gate'?)" in text
    assert all(repr(name) in text for name in MERGES)
    assert "or pass a Keras layer called on [skip, branch]" in text
    with pytest.raises(ValueError, match=r"Scale\(on=...\) must be 'branch' or 'skip'"):
        Scale(on="body")


def test_merges_with_per_channel_parameters_need_a_known_channel_dim() -> None:
    unknown = [(None, 3, None), (None, 3, None)]  # Residual's planner refuses this earlier
    with pytest.raises(ValueError, match=r"ls: a per-channel Scale .* \(None, 3, None\).*Fix:"):
        Scale(1e-5, per_channel=True, name="ls").build(unknown)
    with pytest.raises(ValueError, match=r"tg: TanhGate needs the channel dim .*Fix:"):
        TanhGate(name="tg").build(unknown)
