"""What a training run is: fingerprints of the model and the data, the check that a model can
classify its data, and the differences that make a checkpoint another run.

A resumed run must be the same run: the same config (except
:data:`~skipkit.train.config.RESUMABLE_CHANGES`), the same model (class, parameter names,
shapes and dtypes, and the caller's identity such as the registry name and builder options)
and the same data (size, and a hash of the contents of tensor-backed datasets).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from skipkit._io import sha256_bytes
from skipkit.train.config import RESUMABLE_CHANGES

__all__ = ["check_classifier", "data_fingerprint", "model_fingerprint", "resume_differences"]


def resume_differences(
    state: dict[str, Any], config: dict[str, Any], identity: dict[str, Any]
) -> list[str]:
    """``"key old -> new"`` for every difference between a checkpoint's ``state`` and this
    run's ``config`` (as ``TrainConfig.to_dict()``) and ``identity``; empty when resumable."""
    old_cfg = state.get("config") or {}
    diffs = [
        f"{k} {_short(old_cfg.get(k))} -> {_short(config.get(k))}"
        for k in sorted(set(old_cfg) | set(config))
        if k not in RESUMABLE_CHANGES and _norm(old_cfg.get(k)) != _norm(config.get(k))
    ]
    old_id, new_id = _flatten(state.get("identity") or {}), _flatten(identity)
    diffs += [
        f"{k} {_short(old_id.get(k))} -> {_short(new_id.get(k))}"
        for k in sorted(set(old_id) | set(new_id))
        if _norm(old_id.get(k)) != _norm(new_id.get(k))
    ]
    return diffs


def check_classifier(model: nn.Module, data: Dataset[Any]) -> None:
    """Refuse a model that cannot classify ``data``: one eval-mode forward of two items.

    The logits ``(N, K)`` must have ``K`` above every label (all labels of a tensor-backed
    dataset, else those of the two items).

    Raises:
        ValueError: the forward fails, or the output is not ``(N, K)`` with enough classes.
    """
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the training data is empty")
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        x, y, labels = data.tensors[0][:2], data.tensors[1][:2], data.tensors[1]
    else:
        items = [data[i] for i in range(min(2, n))]
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items])
        labels = getattr(data, "labels", y)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(device))
    except (RuntimeError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ValueError(
            f"{type(model).__name__} cannot take the training data: inputs of shape "
            f"{tuple(x.shape)} fail ({reason}); build the model for this data (in_channels, "
            "dims, ...)"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{type(model).__name__} returns {shape} for inputs {tuple(x.shape)}; the trainer "
            "needs logits of shape (N, num_classes)"
        )
    top = int(torch.as_tensor(labels).max()) if torch.as_tensor(labels).numel() else -1
    if out.shape[1] <= top:
        raise ValueError(
            f"{type(model).__name__} has {out.shape[1]} outputs, but the data has labels up to "
            f"{top}: build it with num_classes >= {top + 1}"
        )


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Class and a hash of the parameter/buffer names, shapes and dtypes of ``model``."""
    sd = model.state_dict()
    text = "\n".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in sd.items())
    cls = type(model)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "tensors": len(sd),
        "parameters": sum(p.numel() for p in model.parameters()),
        "sha256": sha256_bytes(text.encode()),
    }


def data_fingerprint(data: Dataset[Any] | None) -> dict[str, Any] | None:
    """Size and (for tensor-backed datasets) a hash of the contents of ``data``.

    Items are never drawn: an augmenting dataset would consume random numbers.
    """
    if data is None:
        return None
    tensors: Sequence[torch.Tensor] = ()
    if isinstance(data, TensorDataset):
        tensors = data.tensors
    elif isinstance(getattr(data, "images", None), torch.Tensor):
        tensors = (data.images, data.labels)  # type: ignore[attr-defined]
    doc: dict[str, Any] = {"size": len(data), "type": type(data).__name__}  # type: ignore[arg-type]
    if tensors:
        h = hashlib.sha256()
        for t in tensors:
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        doc["sha256"] = h.hexdigest()
    return doc


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _norm(v: Any) -> Any:
    # JSON turns tuples into lists; compare the JSON forms
    return json.loads(json.dumps(v, default=str))


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    if isinstance(v, str) and len(v) == 64:  # a hash: the head is enough to tell them apart
        return text[:11] + '..."'
    return text if len(text) <= 40 else text[:37] + "..."
