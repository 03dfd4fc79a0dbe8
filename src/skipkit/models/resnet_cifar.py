"""skipkit.models.resnet_cifar (being written)."""
