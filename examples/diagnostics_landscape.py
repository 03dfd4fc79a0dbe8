"""Loss landscapes (Li et al. 2018) of a small residual net and its plain twin on MNIST-1D,
and the loss along the straight line from the initial to the trained weights.

    python examples/diagnostics_landscape.py [OUT_DIR]

Writes landscapes.png (contours + surfaces, one colour scale), interpolation.png and the
landscapes as .npz to OUT_DIR. Larger grids: raise STEPS; several processes:
``torchrun --nproc-per-node 4 -m skipkit.cli landscape ...`` (see docs/guide_diagnostics.md).
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

from torch import nn
from torch.utils.data import TensorDataset

from skipkit.data import mnist1d
from skipkit.diagnostics import interpolate, loss_landscape, plot_landscapes
from skipkit.models.resnet_cifar import cifar_resnet
from skipkit.train import Trainer, seed_everything

STEPS, EXAMPLES = 7, 256
out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="landscape-"))
out.mkdir(parents=True, exist_ok=True)
train, _ = mnist1d()
subset = TensorDataset(train.tensors[0][:1000], train.tensors[1][:1000])
probe = (train.tensors[0][:EXAMPLES], train.tensors[1][:EXAMPLES])  # (256, 1, 40), (256,)

lands, lines = [], []
for skip in (True, False):
    seed_everything(0)
    net = cifar_resnet(8, dims=1, in_channels=1, num_classes=10, skip=skip)
    start = copy.deepcopy(net.state_dict())
    Trainer(net, subset, None, epochs=3, quiet=True, device="cpu").fit()
    name = "ResNet-8" if skip else "plain-8"
    land = loss_landscape(net, probe, nn.CrossEntropyLoss(), steps=STEPS, name=name)
    land.save(out / f"{name}.npz")
    s = land.summary()
    print(
        f"{name}: loss {s['origin_loss']:.3f} at the weights, max {s['max_loss']:.3g}, "
        f"non-convex share {s['nonconvex']:.0%}"
    )
    lands.append(land)
    lines.append(
        interpolate(net, start, net.state_dict(), probe, nn.CrossEntropyLoss(), steps=11, name=name)
    )
plot_landscapes(lands, out / "landscapes.png")
plot_landscapes(lines, out / "interpolation.png", title="initial (a=0) → trained (a=1)")
print(f"plots in {out}")
