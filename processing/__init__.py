"""Data-side helpers that do not travel with checkpoints (datasets, synthetic media)."""
