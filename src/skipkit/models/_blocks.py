"""Pieces shared by the model families: layer tables, init, weight loading.

:func:`load_weights` reads a ``state_dict`` from a local ``.safetensors`` file, a torch
checkpoint (unpickled with ``weights_only=True``, so no code runs) or an http(s) URL cached
through ``torch.hub``, and loads it with errors that name the offending keys.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skipkit._weights import read_state_dict as read_file

log = logging.getLogger(__name__)

CONV: dict[int, type[nn.Conv1d | nn.Conv2d | nn.Conv3d]] = {
    1: nn.Conv1d,
    2: nn.Conv2d,
    3: nn.Conv3d,
}
BATCHNORM: dict[int, type[nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d]] = {
    1: nn.BatchNorm1d,
    2: nn.BatchNorm2d,
    3: nn.BatchNorm3d,
}
GLOBAL_AVGPOOL: dict[int, type[nn.Module]] = {
    1: nn.AdaptiveAvgPool1d,
    2: nn.AdaptiveAvgPool2d,
    3: nn.AdaptiveAvgPool3d,
}

WeightsSpec = str | os.PathLike[str] | Mapping[str, torch.Tensor]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def check_dims(owner: str, dims: int) -> int:
    """Validate a ``dims`` argument (spatial rank of the convolutions)."""
    if dims not in CONV:
        raise ValueError(
            f"{owner}(dims={dims!r}): dims is the number of spatial dims, 1 (sequences "
            "(N, C, L)), 2 (images (N, C, H, W)) or 3 (volumes (N, C, D, H, W))"
        )
    return dims


def he_init(model: nn.Module) -> None:
    """He et al. 2015 init: Kaiming normal (``fan_out``, ReLU gain) for every convolution,
    BatchNorm/GroupNorm at weight 1, bias 0. Linear layers keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _is_url(spec: str) -> bool:
    return urllib.parse.urlparse(spec).scheme in ("http", "https")


def _unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint (``{"state_dict": {...}}`` and similar
    training wrappers are opened)."""
    if isinstance(obj, Mapping):
        wrapped = [obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        table: Mapping[Any, Any] = wrapped[0] if wrapped else obj
        if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in table.items()):
            return dict(table)
        bad = [k for k, v in table.items() if not isinstance(v, torch.Tensor)][:5]
        raise ValueError(
            f"{source} is not a state_dict: entries {bad} are not tensors. Save weights with "
            "torch.save(model.state_dict(), path) or safetensors.torch.save_file(...)"
        )
    raise ValueError(
        f"{source} holds a {type(obj).__name__}, not a state_dict. Save weights with "
        "torch.save(model.state_dict(), path) or safetensors.torch.save_file(...)"
    )


def _load_url(url: str, *, progress: bool) -> dict[str, torch.Tensor]:
    name = Path(urllib.parse.urlparse(url).path).name
    if name.endswith(".safetensors"):
        # torch.hub only unpickles; download the file into the same cache and read it here.
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        cache.mkdir(parents=True, exist_ok=True)
        target = cache / name
        if not target.is_file():
            log.info("downloading %s to %s", url, target)
            torch.hub.download_url_to_file(url, str(target), progress=progress)
        return read_file(target)
    obj = torch.hub.load_state_dict_from_url(
        url, map_location="cpu", progress=progress, weights_only=True
    )
    return _unwrap(obj, repr(url))


def read_state_dict(weights: WeightsSpec, *, progress: bool = False) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from a path (``.safetensors`` or a torch checkpoint), a URL, or a mapping.

    Torch checkpoints are read with ``weights_only=True``; a checkpoint wrapping its weights
    under ``"state_dict"`` or ``"model"`` is opened. URLs are downloaded once into
    ``torch.hub.get_dir()/checkpoints`` (the cache torchvision uses).

    Raises:
        FileNotFoundError: the path does not exist.
        CheckpointError: (a ``ValueError``) the file is not a regular file, is damaged, or
            holds more than tensors (read by :func:`skipkit._weights.read_state_dict`).
        TypeError: ``weights`` is of another type.
    """
    if isinstance(weights, Mapping):
        return _unwrap(weights, "the given mapping")
    if isinstance(weights, str | os.PathLike):
        spec = os.fspath(weights)
        if _is_url(spec):
            return _load_url(spec, progress=progress)
        return read_file(spec)
    raise TypeError(
        f"weights must be a path, an http(s) URL or a state_dict mapping, "
        f"got {type(weights).__name__}"
    )


def load_weights(
    model: nn.Module,
    weights: WeightsSpec,
    *,
    strict: bool = True,
    reinit: Iterable[str] = (),
    progress: bool = False,
) -> nn.Module:
    """Load ``weights`` (see :func:`read_state_dict`) into ``model``.

    Args:
        model: the model to fill.
        weights: a path, an http(s) URL, or a ``state_dict``.
        strict: every key must match, as in ``load_state_dict``.
        reinit: key prefixes (e.g. ``("fc.",)``) whose checkpoint tensors are skipped when
            their shapes differ from the model's, so a classifier head built for another
            ``num_classes`` keeps its fresh init instead of failing.
        progress: show a download progress bar for URLs.

    Returns:
        ``model``.

    Raises:
        ValueError: missing, unexpected or wrongly shaped keys, each listed with the fix.
    """
    state = read_state_dict(weights, progress=progress)
    own = model.state_dict()
    prefixes = tuple(reinit)
    if prefixes:
        dropped = [
            k
            for k, v in state.items()
            if k.startswith(prefixes) and k in own and own[k].shape != v.shape
        ]
        for k in dropped:
            del state[k]
        if dropped:
            log.info("%s: keeping the fresh init of %s", type(model).__name__, ", ".join(dropped))
    else:
        dropped = []
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state and k not in dropped]
    unexpected = [k for k in state if k not in own]
    name = type(model).__name__
    if shape_errors:
        raise ValueError(
            f"{name}: {len(shape_errors)} weight(s) have other shapes in the checkpoint: "
            + "; ".join(shape_errors[:5])
            + ". Build the model with the checkpoint's options (num_classes, in_channels, "
            "shortcut, ...)"
        )
    if strict and (missing or unexpected):
        raise ValueError(
            f"{name}: the checkpoint does not fit this model: missing {len(missing)} key(s) "
            f"{missing[:5]}, unexpected {len(unexpected)} key(s) {unexpected[:5]}. Build the "
            "model the checkpoint was saved from (same depth and options), or load the "
            "matching part with load_weights(model, weights, strict=False)"
        )
    model.load_state_dict(state, strict=False)
    return model


__all__ = [
    "BATCHNORM",
    "CONV",
    "GLOBAL_AVGPOOL",
    "WeightsSpec",
    "check_dims",
    "he_init",
    "load_weights",
    "read_state_dict",
]
