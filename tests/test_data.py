"""skipkit.data: MNIST-1D generation and cache, CIFAR python batches, synthetic data, lookup."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from skipkit import data
from skipkit.data import CIFAR_MEAN, CIFAR_STD


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mnist1d")
    data.mnist1d(root=root)
    return root


def test_mnist1d_shapes_and_dtypes(mnist_root: Path) -> None:
    train, test = data.mnist1d(root=mnist_root)
    assert len(train) == 4000 and len(test) == 1000
    x, y = train.tensors
    assert x.shape == (4000, 1, 40) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert test.tensors[0].shape == (1000, 1, 40)
    # the generator centres and scales the whole dataset
    assert abs(float(x.mean())) < 0.1 and 0.8 < float(x.std()) < 1.2


def test_mnist1d_cache_is_reused_and_rebuilt_when_corrupt(mnist_root: Path) -> None:
    path = mnist_root / "mnist1d_seed42.npz"
    assert path.is_file()
    assert not [p for p in mnist_root.iterdir() if p.name.endswith(".tmp")]
    first, _ = data.mnist1d(root=mnist_root)
    stamp = path.stat().st_mtime_ns
    again, _ = data.mnist1d(root=mnist_root)
    assert path.stat().st_mtime_ns == stamp  # read, not rewritten
    assert torch.equal(first.tensors[0], again.tensors[0])

    corrupt = mnist_root / "corrupt"
    corrupt.mkdir()
    (corrupt / "mnist1d_seed42.npz").write_bytes(b"not an npz file")
    np.random.seed(7)
    random.seed(7)
    rebuilt, _ = data.mnist1d(root=corrupt)
    # the generator reseeds numpy and random globally; the caller's streams must survive it
    got = (np.random.rand(), random.random())
    np.random.seed(7)
    random.seed(7)
    assert got == (np.random.rand(), random.random())
    assert torch.equal(rebuilt.tensors[0], first.tensors[0])
    with np.load(corrupt / "mnist1d_seed42.npz") as npz:
        assert npz["x"].shape == (4000, 40)


@pytest.mark.parametrize("damage", ["truncated-zip", "empty", "wrong-keys", "wrong-shape", "pipe"])
def test_corrupt_mnist1d_cache_is_rebuilt_with_a_warning(
    mnist_root: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = (mnist_root / "mnist1d_seed42.npz").read_bytes()
    path = tmp_path / "mnist1d_seed42.npz"
    if damage == "truncated-zip":
        path.write_bytes(good[: len(good) // 3])  # BadZipFile inside numpy
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "wrong-keys":
        np.savez(path, a=np.zeros(3))
    elif damage == "wrong-shape":
        np.savez(
            path, x=np.zeros((5, 3)), y=np.zeros(5), x_test=np.zeros((2, 3)), y_test=np.zeros(2)
        )
    else:
        os.mkfifo(path)  # refused without reading (reading would block forever)
    rebuilt, _ = data.mnist1d(root=tmp_path)
    assert rebuilt.tensors[0].shape == (4000, 1, 40)
    assert "MNIST-1D cache" in caplog.text and "rebuilding it" in caplog.text
    assert path.is_file() and path.read_bytes() == good


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SKIPKIT_CACHE", str(tmp_path))
    assert data.cache_dir() == tmp_path
    assert data.cache_dir("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("SKIPKIT_CACHE")
    assert data.cache_dir() == Path.home() / ".cache" / "skipkit"


# ---------------------------------------------------------------------------------------- CIFAR


def _write_batch(path: Path, images: np.ndarray, labels: list[int], label_key: bytes) -> None:
    """A batch file as in the official archives: a protocol-2 pickle of a bytes-keyed dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        b"batch_label": b"testing batch 1 of 1",
        label_key: labels,
        b"data": images.reshape(len(labels), 3072),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(doc, f, protocol=2)


def _make_cifar10(root: Path, per_batch: int = 3, n_test: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    all_images = []
    for i in range(1, 6):
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        all_images.append(images)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        _write_batch(folder / f"data_batch_{i}", images, labels, b"labels")
    test = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    _write_batch(folder / "test_batch", test, list(range(n_test)), b"labels")
    return np.concatenate(all_images)


def test_cifar10_reads_official_batch_format(tmp_path: Path) -> None:
    images = _make_cifar10(tmp_path)
    train = data.cifar(tmp_path, train=True)
    test = data.cifar(tmp_path, train=False)
    assert len(train) == 15 and len(test) == 2
    x, y = train[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # rows of the batch are the red plane, then green, then blue, each row-major 32x32
    c, h, w = 1, 5, 7
    expected = (images[4, c, h, w] / 255.0 - CIFAR_MEAN[c]) / CIFAR_STD[c]
    assert float(x[c, h, w]) == pytest.approx(expected, abs=1e-5)
    assert test[1][1].item() == 1


def test_cifar_augmentation_crops_and_flips_within_padding(tmp_path: Path) -> None:
    _make_cifar10(tmp_path)
    plain = data.cifar(tmp_path, train=True)
    aug = data.cifar(tmp_path, train=True, augment=True)
    torch.manual_seed(0)
    base = plain[0][0]
    padded = torch.nn.functional.pad(base, (4, 4, 4, 4))
    seen_shift = False
    for _ in range(20):
        x, _ = aug[0]
        assert x.shape == (3, 32, 32)
        candidates = [
            padded[:, t : t + 32, l : l + 32].flip(-1) if f else padded[:, t : t + 32, l : l + 32]
            for t in range(9)
            for l in range(9)
            for f in (False, True)
        ]
        assert any(torch.equal(x, cand) for cand in candidates)
        seen_shift |= not torch.equal(x, base)
    assert seen_shift


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    for name, n in (("train", 4), ("test", 2)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        _write_batch(folder / name, images, [99, 0, 50, 7][:n], b"fine_labels")
    train, test = data.get_dataset("cifar100", root=tmp_path)
    assert len(train) == 4 and len(test) == 2
    assert [int(train[i][1]) for i in range(4)] == [99, 0, 50, 7]


def test_cifar_missing_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download"):
        data.cifar(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="data folder"):
        data.get_dataset("cifar10")


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_cifar_loader_refuses_code_in_pickles(tmp_path: Path) -> None:
    _make_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(bad, "wb") as f:
        pickle.dump({b"data": _Payload(), b"labels": [0]}, f, protocol=2)
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ValueError, match="refusing"):
            data.cifar(tmp_path, train=False)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()


def test_cifar_loader_validates_keys_and_shapes(tmp_path: Path) -> None:
    _make_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(bad, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f, protocol=2)
    with pytest.raises(ValueError, match="missing keys"):
        data.cifar(tmp_path, train=False)
    with open(bad, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 768), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match="3072"):
        data.cifar(tmp_path, train=False)
    with pytest.raises(ValueError, match="10 or 100"):
        data.cifar(tmp_path, num_classes=20)


# ------------------------------------------------------------------------------ synthetic, lookup


def test_synthetic_is_deterministic_and_shaped() -> None:
    a_train, a_test = data.synthetic(64, shape=(3, 8, 8), num_classes=5, seed=1)
    b_train, _ = data.synthetic(64, shape=(3, 8, 8), num_classes=5, seed=1)
    assert a_train.tensors[0].shape == (64, 3, 8, 8) and len(a_test) == 16
    assert torch.equal(a_train.tensors[0], b_train.tensors[0])
    assert int(a_train.tensors[1].max()) < 5
    with pytest.raises(ValueError):
        data.synthetic(0)


def test_get_dataset_by_name(mnist_root: Path) -> None:
    train, test = data.get_dataset("MNIST-1D", root=mnist_root)
    assert len(train) == 4000 and len(test) == 1000
    train, _ = data.get_dataset("synthetic", n=10, n_test=2)
    assert len(train) == 10
    with pytest.raises(ValueError, match=r"mnist1d, cifar10, cifar100, synthetic"):
        data.get_dataset("imagenet")
    assert data.DATASETS["mnist1d"].dims == 1 and data.DATASETS["cifar100"].num_classes == 100
