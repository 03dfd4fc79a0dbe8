"""skipkit.models.densenet (being written)."""
