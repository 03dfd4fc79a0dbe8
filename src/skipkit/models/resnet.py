"""skipkit.models.resnet (being written)."""
