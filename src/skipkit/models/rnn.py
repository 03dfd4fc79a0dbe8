"""skipkit.models.rnn (being written)."""
