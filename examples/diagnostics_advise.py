"""Where do skips belong? Ask the advisor about a plain 56-layer CNN, then add its advice.

    python examples/diagnostics_advise.py

Prints the suggestions (ResNet-56's 27 basic-block skips, found from gradient flow alone) and
the spread of the gradient signal across depth before and after adding them. For the training
check, run ``skipkit advise --model resnet56 --no-skip --validate-epochs 20``.
"""

from __future__ import annotations

import math

from torch import nn

import skipkit.models as models
from skipkit.data import mnist1d
from skipkit.diagnostics import advise, apply, gradient_flow
from skipkit.train import seed_everything

train, _ = mnist1d()
x, y = train.tensors[0][:128], train.tensors[1][:128]  # x: (128, 1, 40)
seed_everything(0)
plain = models.create("resnet56", dims=1, in_channels=1, num_classes=10, skip=False)

tips = advise(plain, (x, y), nn.CrossEntropyLoss())
print(f"{len(tips)} suggestions, e.g.")
for t in tips[:3] + tips[9:10]:
    print(f"  add_skip(model, {t.src!r}, {t.dst!r}, merge={t.merge!r}, shortcut={t.shortcut!r})")
print(f"why: {tips[9].reason}")

net = apply(plain, tips, example=x[:2])  # a skipkit.surgery.Grafted wrapper


def spread(model: nn.Module) -> float:
    """Decades between the largest and smallest ‖∂L/∂W‖·‖W‖ over the hidden layers."""
    flow = gradient_flow(model, (x, y), nn.CrossEntropyLoss())
    sig = [math.log10(v.weight_grad_norm * v.weight_norm) for v in flow.layers[1:-1]]
    return max(sig) - min(sig)


print(f"gradient signal spread: {spread(plain):.2f} decades without, {spread(net):.2f} with")
assert advise(net, (x, y), nn.CrossEntropyLoss()) == []
