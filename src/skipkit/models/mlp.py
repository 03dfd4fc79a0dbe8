"""skipkit.models.mlp (being written)."""
