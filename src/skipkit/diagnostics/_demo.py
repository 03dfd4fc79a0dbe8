"""The demo's networks and data, and the pieces every report section is made of.

:class:`ModelSource` builds the demo's networks (initial weights from its seed, trained
weights from its run folder) and draws its data; :class:`ReportSection` is what
:mod:`skipkit.diagnostics.sections` and :mod:`skipkit.diagnostics.evidence` return.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skipkit.data import DATASETS, get_dataset
from skipkit.experiments.degradation import build_model
from skipkit.models import load_weights
from skipkit.train import TrainConfig, Trainer, seed_everything

__all__ = ["ModelSource", "ReportSection", "net_label", "png_bytes", "twin_colors"]

# the report's colours: plain nets warm, residual nets cool, darker = deeper
_PLAIN = ("#f4a582", "#d6604d", "#b2182b", "#67001f")
_RESIDUAL = ("#92c5de", "#4393c3", "#2166ac", "#053061")


@dataclass
class ReportSection:
    """A section of the HTML report: ``add_section(s.title, s.html, s.images, data=s.data)``."""

    title: str
    html: str
    images: list[tuple[str, bytes]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # the numbers behind it, JSON-ready


class ModelSource:
    """The demo's networks and data: initial weights from ``seed``, trained weights from
    ``runs`` (or, when a run is missing, ``train_epochs`` of the default recipe here, once).

    Args:
        runs: the demo's ``out_dir/runs`` folder, or ``None``.
        dataset: a name of :data:`skipkit.data.DATASETS`.
        seed: the demo's seed.
        train_epochs: epochs for a network whose weights are not in ``runs``.
    """

    def __init__(
        self,
        runs: Path | None = None,
        *,
        dataset: str = "mnist1d",
        seed: int = 0,
        train_epochs: int = 8,
    ) -> None:
        self.runs, self.dataset, self.seed, self.train_epochs = runs, dataset, seed, train_epochs
        self.num_classes = DATASETS[dataset].num_classes
        self._fitted: dict[tuple[int, bool], dict[str, torch.Tensor]] = {}

    def initial(self, depth: int, skip: bool, *, as_residual: bool = False) -> nn.Module:
        """The network at the demo's initial weights; ``as_residual`` builds the residual
        architecture with the plain net's weights (run it in ``skips_disabled``)."""
        seed_everything(self.seed)  # the demo's initial weights
        model = build_model(depth, skip=skip, dataset=self.dataset)
        if as_residual and not skip:
            residual = build_model(depth, skip=True, dataset=self.dataset)
            residual.load_state_dict(model.state_dict())
            model = residual
        return model

    def weights(self, depth: int, skip: bool) -> Path | None:
        """The demo's trained weights of this network, if it has them."""
        if self.runs is None:
            return None
        path = self.runs / _name(depth, skip) / "model.safetensors"
        return path if path.is_file() else None

    def trained(
        self, depth: int, skip: bool, *, as_residual: bool = False
    ) -> tuple[nn.Module, str]:
        """The trained network and where its weights come from (a phrase for the text)."""
        model = self.initial(depth, skip, as_residual=as_residual)
        path = self.weights(depth, skip)
        if path is not None:
            load_weights(model, path)
            return model, f"the demo's trained {net_label(depth, skip)}"
        if (depth, skip) not in self._fitted:
            net = self.initial(depth, skip)
            train, _ = get_dataset(self.dataset)
            cfg = TrainConfig(epochs=self.train_epochs, seed=self.seed, quiet=True, device="cpu")
            Trainer(net, train, None, cfg).fit()
            self._fitted[(depth, skip)] = {k: v.clone() for k, v in net.state_dict().items()}
        model.load_state_dict(self._fitted[(depth, skip)])
        return model, f"{net_label(depth, skip)} trained for {self.train_epochs} epochs"

    def train_batch(self, n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` training examples drawn with ``seed + offset``: ``x (n, C, *S)``, ``y (n,)``."""
        return _batch(self.dataset, n, self.seed + offset)

    def test_set(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test examples (``None``: all)."""
        _, test = get_dataset(self.dataset)
        size = len(test)  # type: ignore[arg-type]
        count = size if n is None else min(n, size)
        xs, ys = zip(*(test[i] for i in range(count)), strict=True)
        return torch.stack(xs), torch.as_tensor(ys)


# ----------------------------------------------------------------------------- helpers


def _name(depth: int, skip: bool) -> str:
    return f"{'residual' if skip else 'plain'}-{depth}"


def net_label(depth: int, skip: bool) -> str:
    """The name the report shows: ``ResNet-56`` or ``plain-56``."""
    return f"{'ResNet' if skip else 'plain'}-{depth}"


def twin_colors(depths: Sequence[int]) -> dict[tuple[int, bool], str]:
    """A colour per ``(depth, skip)``: plain nets warm, residual nets cool, darker = deeper."""
    order = sorted(set(depths))
    picks = [1 + round(2 * i / max(len(order) - 1, 1)) for i in range(len(order))]
    out = {}
    for d, k in zip(order, picks, strict=True):
        out[(d, False)], out[(d, True)] = _PLAIN[k], _RESIDUAL[k]
    return out


def png_bytes(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (120 dpi), for :class:`ReportSection` images."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _batch(dataset: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    train, _ = get_dataset(dataset)
    size = len(train)  # type: ignore[arg-type]
    idx = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
    xs, ys = zip(*(train[int(i)] for i in idx), strict=True)
    return torch.stack(xs), torch.as_tensor(ys)
