"""Architectures built from skip connections, each with its plain twin (``skip=False``).

>>> import skipkit.models as M
>>> M.list_models("resnet2*")
['resnet20']
"""

from __future__ import annotations

from skipkit.models import densenet, mlp, resnet, resnet_cifar, rnn, transformer, unet
from skipkit.models._blocks import load_weights, read_state_dict
from skipkit.models._registry import create, is_registered, list_models, register_model
from skipkit.models.resnet import ResNet
from skipkit.models.resnet_cifar import CifarResNet, cifar_resnet

__all__ = [
    "CifarResNet",
    "ResNet",
    "cifar_resnet",
    "create",
    "densenet",
    "is_registered",
    "list_models",
    "load_weights",
    "mlp",
    "read_state_dict",
    "register_model",
    "resnet",
    "resnet_cifar",
    "rnn",
    "transformer",
    "unet",
]
