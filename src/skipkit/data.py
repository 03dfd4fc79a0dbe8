"""Datasets for experiments: MNIST-1D (the default), CIFAR-10/100 and synthetic data.

Every loader returns ordinary torch datasets whose items are ``(x, y)`` pairs with ``x`` a float32
tensor and ``y`` an int64 class index; the trainer accepts any torch ``Dataset`` of that form.

=============  ============  ============  =======  ====================================
name           x per item    classes       train    source
=============  ============  ============  =======  ====================================
``mnist1d``    ``(1, 40)``   10            4000     ``mnist1d`` package generator, cached
``cifar10``    ``(3, 32, 32)`` 10          50000    local python-pickle batches
``cifar100``   ``(3, 32, 32)`` 100         50000    local python-pickle batches
``synthetic``  any           any           any      random class templates plus noise
=============  ============  ============  =======  ====================================
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from skipkit._io import atomic_write_bytes, read_regular_bytes
from skipkit._lazy import import_optional, load

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "CifarDataset",
    "DatasetSpec",
    "cache_dir",
    "cifar",
    "get_dataset",
    "mnist1d",
    "synthetic",
]

log = logging.getLogger(__name__)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a named dataset.

    ``dims`` is the number of spatial dimensions of one item (1 for sequences, 2 for images).
    """

    name: str
    dims: int
    in_channels: int
    num_classes: int


DATASETS: dict[str, DatasetSpec] = {
    "mnist1d": DatasetSpec("mnist1d", dims=1, in_channels=1, num_classes=10),
    "cifar10": DatasetSpec("cifar10", dims=2, in_channels=3, num_classes=10),
    "cifar100": DatasetSpec("cifar100", dims=2, in_channels=3, num_classes=100),
    "synthetic": DatasetSpec("synthetic", dims=1, in_channels=1, num_classes=10),
}


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``root``, else ``$SKIPKIT_CACHE``, else ``~/.cache/skipkit``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("SKIPKIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "skipkit"


# ----------------------------------------------------------------------------------- MNIST-1D


def mnist1d(
    *, root: str | os.PathLike[str] | None = None, seed: int = 42
) -> tuple[TensorDataset, TensorDataset]:
    """MNIST-1D (Greydanus & Kobak): 4000 training and 1000 test sequences of length 40.

    Built with the ``mnist1d`` package's procedural generator (its default arguments, never its
    download) and cached as ``mnist1d_seed{seed}.npz`` under :func:`cache_dir`. ``seed=42`` is
    the published dataset.

    Returns:
        ``(train, test)``; each item is ``x: (1, 40) float32``, ``y: () int64`` in ``[0, 10)``.
    """
    path = cache_dir(root) / f"mnist1d_seed{seed}.npz"
    arrays = _read_mnist1d_cache(path) if path.exists() or path.is_symlink() else None
    if arrays is None:
        arrays = _build_mnist1d(seed)
        buf = _npz_bytes(arrays)
        try:
            atomic_write_bytes(path, buf)
            log.debug("cached MNIST-1D at %s", path)
        except OSError as exc:  # a read-only home must not stop an experiment
            log.warning("could not cache MNIST-1D at %s: %s", path, exc)

    def pack(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(1)  # (N, 1, L)
        return TensorDataset(xt, torch.from_numpy(y.astype(np.int64)))

    return pack(arrays["x"], arrays["y"]), pack(arrays["x_test"], arrays["y_test"])


def _read_mnist1d_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or ``None`` (with a warning) when the cache is unusable."""
    try:
        data = read_regular_bytes(path, what="MNIST-1D cache file")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("x", "y", "x_test", "y_test")}
        n, n_test = len(arrays["y"]), len(arrays["y_test"])
        if arrays["x"].shape != (n, 40) or arrays["x_test"].shape != (n_test, 40) or not n:
            raise ValueError(f"unexpected shapes {arrays['x'].shape}, {arrays['x_test'].shape}")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("the MNIST-1D cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    return arrays


def _build_mnist1d(seed: int) -> dict[str, np.ndarray]:
    # imported here, once per cache, through skipkit._lazy: it takes about 1.4 s
    m1d = import_optional("mnist1d.data", purpose="building the MNIST-1D dataset")
    args = m1d.get_dataset_args()
    args.seed = seed
    # make_dataset reseeds the global numpy and python generators; keep the caller's streams.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = m1d.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x": np.asarray(d["x"], dtype=np.float32),
        "y": np.asarray(d["y"], dtype=np.int64),
        "x_test": np.asarray(d["x_test"], dtype=np.float32),
        "y_test": np.asarray(d["y_test"], dtype=np.int64),
    }


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


# -------------------------------------------------------------------------------------- CIFAR

_CIFAR_LAYOUT = {
    10: (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
    ),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}

# The CIFAR python batches are pickles of dicts of bytes, lists and numpy arrays. A pickle can
# run arbitrary code, so only these constructors may be called while reading one.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: not part of a CIFAR python batch file"
        )


def _load_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: ``data (N, 3072) uint8`` and labels ``(N,) int64``."""
    with open(path, "rb") as f:
        try:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
            raise ValueError(f"{path} is not a CIFAR python batch file: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR python batch file: expected a dict")
    obj = {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}
    missing = [k.decode() for k in (b"data", label_key) if k not in obj]
    if missing:
        raise ValueError(f"{path} is not a CIFAR python batch file: missing keys {missing}")
    data = np.asarray(obj[b"data"], dtype=np.uint8)
    labels = np.asarray(obj[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{path}: expected data of shape (N, 3072) and N labels, "
            f"got {tuple(data.shape)} and {tuple(labels.shape)}"
        )
    return data, labels


class CifarDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """CIFAR images held as uint8, normalized (and optionally augmented) per item.

    Item: ``x: (3, 32, 32) float32`` normalized with :data:`CIFAR_MEAN`/:data:`CIFAR_STD`,
    ``y: () int64``. ``augment`` applies the He et al. recipe: zero-pad 4, random 32×32 crop,
    random horizontal flip (drawn from torch's global generator, which the trainer seeds).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, augment: bool = False):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        self.images = images
        self.labels = labels
        self.augment = augment
        self._mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float().div_(255.0)  # (3, 32, 32)
        x = (x - self._mean) / self._std
        if self.augment:
            h, w = x.shape[-2:]
            # padding after normalizing fills the border with the mean colour
            padded = F.pad(x, (4, 4, 4, 4))
            top, left = (int(v) for v in torch.randint(0, 9, (2,)))
            x = padded[:, top : top + h, left : left + w]
            if bool(torch.rand(()) < 0.5):
                x = x.flip(-1)
        return x.contiguous(), self.labels[i]


def cifar(
    root: str | os.PathLike[str],
    *,
    num_classes: int = 10,
    train: bool = True,
    augment: bool = False,
    download: bool = False,
) -> CifarDataset:
    """CIFAR-10 or CIFAR-100 from the official python version in a local folder.

    ``root`` must hold ``cifar-10-batches-py/`` (``data_batch_1`` … ``data_batch_5``,
    ``test_batch``) or ``cifar-100-python/`` (``train``, ``test``), as extracted from the
    archives at https://www.cs.toronto.edu/~kriz/cifar.html. These files are Python pickles; they
    are read with a restricted unpickler that only rebuilds numpy arrays, so a tampered file
    fails instead of running code. With ``download=True`` and torchvision installed, missing
    files are fetched with torchvision's downloader first.

    Returns:
        a dataset of ``x: (3, 32, 32) float32``, ``y: () int64`` in ``[0, num_classes)``.
    """
    if num_classes not in _CIFAR_LAYOUT:
        raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
    folder, train_files, test_files, label_key = _CIFAR_LAYOUT[num_classes]
    base = Path(root).expanduser() / folder
    names = train_files if train else test_files
    if download and not all((base / n).is_file() for n in names):
        _download_cifar(Path(root).expanduser(), num_classes)
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-{num_classes} not found: {base} lacks {', '.join(missing)}; extract the "
            f"python version from {_CIFAR_URL} into {Path(root)} or pass download=True "
            "(--download on the command line)"
        )
    parts = [_load_cifar_batch(base / n, label_key) for n in names]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{base}: labels outside [0, {num_classes})")
    images = torch.from_numpy(data).view(-1, 3, 32, 32)  # rows are R plane, G plane, B plane
    return CifarDataset(images, torch.from_numpy(labels), augment=augment)


def _download_cifar(root: Path, num_classes: int) -> None:
    try:
        tvd = load("torchvision.datasets")  # optional: see skipkit._lazy
    except ImportError as exc:
        raise ValueError(
            "download=True needs torchvision (pip install torchvision); or extract the python "
            f"version from {_CIFAR_URL} into {root}"
        ) from exc
    cls = tvd.CIFAR10 if num_classes == 10 else tvd.CIFAR100
    log.info("downloading CIFAR-%d into %s", num_classes, root)
    cls(str(root), train=True, download=True)


# ---------------------------------------------------------------------------------- synthetic


def synthetic(
    n: int = 512,
    *,
    shape: Sequence[int] = (1, 40),
    num_classes: int = 10,
    noise: float = 0.5,
    n_test: int | None = None,
    seed: int = 0,
) -> tuple[TensorDataset, TensorDataset]:
    """A learnable toy problem: one random template per class plus Gaussian noise.

    Returns:
        ``(train, test)`` with ``n`` and ``n_test`` (default ``n // 4``) items;
        ``x: shape float32``, ``y: () int64`` in ``[0, num_classes)``.
    """
    if n < 1 or num_classes < 1:
        raise ValueError(f"n and num_classes must be positive, got n={n}, {num_classes=}")
    n_test = max(1, n // 4) if n_test is None else n_test
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, *shape, generator=g)

    def draw(m: int) -> TensorDataset:
        y = torch.randint(0, num_classes, (m,), generator=g)
        x = templates[y] + noise * torch.randn(m, *shape, generator=g)
        return TensorDataset(x, y)

    return draw(n), draw(n_test)


# ------------------------------------------------------------------------------------- lookup


def get_dataset(
    name: str, root: str | os.PathLike[str] | None = None, **kwargs: Any
) -> tuple[Dataset[Any], Dataset[Any]]:
    """``(train, test)`` for a dataset named in :data:`DATASETS`.

    ``root`` is the cache folder for ``mnist1d`` and the data folder for CIFAR (required there).
    Keyword arguments go to the loader (``seed`` for mnist1d and synthetic, ``augment`` and
    ``download`` for CIFAR; ``augment`` only affects the training split).
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if key == "mnist1d":
        return mnist1d(root=root, **kwargs)
    if key == "synthetic":
        return synthetic(**kwargs)
    if root is None:
        raise ValueError(f"{name} needs a data folder (root=..., --data-dir on the command line)")
    nc = DATASETS[key].num_classes
    augment = bool(kwargs.pop("augment", False))
    train = cifar(root, num_classes=nc, train=True, augment=augment, **kwargs)
    test = cifar(root, num_classes=nc, train=False, **kwargs)
    return train, test
