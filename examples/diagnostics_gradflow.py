"""Gradient flow of plain and residual CIFAR nets on MNIST-1D, at init and while training.

    python examples/diagnostics_gradflow.py [OUT_DIR]

Writes gradflow.png (gradient norm against depth, four nets overlaid) and in_time.png (the
output-gradient norm per layer over the first training steps of ResNet-20) to OUT_DIR.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import skipkit.models as models
from skipkit.data import mnist1d
from skipkit.diagnostics import GradientFlowRecorder, gradient_flow, plot_gradient_flow
from skipkit.train import Trainer, seed_everything

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="gradflow-"))
out.mkdir(parents=True, exist_ok=True)
train, _ = mnist1d()
x, y = train.tensors[0][:128], train.tensors[1][:128]  # x: (128, 1, 40), y: (128,)

flows = []
for depth in (20, 56):
    for skip in (False, True):
        seed_everything(0)  # the twins start from the same weights
        net = models.create(f"resnet{depth}", dims=1, in_channels=1, num_classes=10, skip=skip)
        name = f"{'ResNet' if skip else 'plain'}-{depth}"
        flow = gradient_flow(net, (x, y), nn.CrossEntropyLoss(), name=name)
        g = flow.column("act_grad_norm")
        print(
            f"{name:>10}: ‖∂L/∂a‖ {g[1]:.3g} at layer 2, {g[-2]:.3g} at layer {len(g) - 1} "
            f"({math.log10(g[1] / g[-2]):+.2f} decades)"
        )
        flows.append(flow)
plot_gradient_flow(flows, out / "gradflow.png")

# the same numbers while training: every 2nd step of a short run
seed_everything(0)
net = models.create("resnet20", dims=1, in_channels=1, num_classes=10)
rec = GradientFlowRecorder(every=2)
small = TensorDataset(train.tensors[0][:512], train.tensors[1][:512])
Trainer(net, small, None, epochs=2, batch_size=64, quiet=True, device="cpu", callbacks=[rec]).fit()
rec.plot(str(out / "in_time.png"))
ratios = [s.grad_ratio for s in rec.history[-1].skips if s.grad_ratio is not None]
print(
    f"recorded {len(rec.history)} snapshots; last step's median branch/shortcut gradient ratio "
    f"{sorted(ratios)[len(ratios) // 2]:.2f}"
)
print(f"plots in {out}")
assert torch.isfinite(torch.tensor(flows[0].column("act_grad_norm"))).all()
