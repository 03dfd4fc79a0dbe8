"""skipkit.models.unet (being written)."""
