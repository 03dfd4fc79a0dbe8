"""The PyTorch front's side of ``test_keras_merges.py``, run in an interpreter of its own: torch
and JAX (or TensorFlow) in one process can crash as their native libraries load.

``python torch_reference.py OUT.npz`` writes, for every merge string of
:data:`skipkit.merges.MERGES` and each case (``dense``: ``(3, 6)``, ``conv``: ``(2, 4, 5, 5)``),
``skipkit.Residual``'s merge parameters at init, then, with the merge moved off its initial
values, every parameter, an input, the block's output and its plain twin's (the same block
under ``skipkit.skips_disabled``); and each string's formula. Keys:
``"{name}:{case}:init:{parameter}"``, ``"{name}:{case}:param:{parameter}"``,
``"{name}:{case}:x"``, ``"{name}:{case}:y"``, ``"{name}:{case}:y_plain"``, ``"formula:{name}"``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

import skipkit as sk
from skipkit.merges import MERGES

SHAPES = {"dense": (3, 6), "conv": (2, 4, 5, 5)}


def residual(name: str, case: str) -> sk.Residual:
    """``x + tanh(body(x))``'s twin: ``Linear(6, 6)`` or ``Conv2d(4, 4, 3, padding=1)``."""
    layer = nn.Linear(6, 6) if case == "dense" else nn.Conv2d(4, 4, 3, padding=1)
    return sk.Residual(nn.Sequential(layer, nn.Tanh()), merge=name, in_shape=SHAPES[case])


def reference() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    gen = torch.Generator().manual_seed(0)
    for name in MERGES:
        out[f"formula:{name}"] = np.array(MERGES[name]().formula)
        for case, shape in SHAPES.items():
            block, key = residual(name, case), f"{name}:{case}"
            with torch.no_grad():
                for p_name, p in block.merge.named_parameters():
                    out[f"{key}:init:{p_name}"] = p.numpy().copy()
                # off the initial values, so that no term hides behind a 0 or a 1
                for p in block.merge.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen))
                x = torch.randn(shape, generator=gen)
                out[f"{key}:x"], out[f"{key}:y"] = x.numpy(), block(x).numpy()
                with sk.skips_disabled(block):
                    out[f"{key}:y_plain"] = block(x).numpy()
                for p_name, p in block.named_parameters():
                    out[f"{key}:param:{p_name}"] = p.numpy().copy()
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], **reference())
