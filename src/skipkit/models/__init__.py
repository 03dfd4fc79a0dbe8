"""Architectures built from skip connections, each with its plain twin (``skip=False``).

>>> import skipkit.models as M
>>> M.list_models("resnet2*")
['resnet20']
"""

from __future__ import annotations

from skipkit.models import densenet, mlp, resnet, resnet_cifar, rnn, unet
from skipkit.models._registry import create, is_registered, list_models, register_model

__all__ = [
    "create",
    "densenet",
    "is_registered",
    "list_models",
    "mlp",
    "register_model",
    "resnet",
    "resnet_cifar",
    "rnn",
    "unet",
]
