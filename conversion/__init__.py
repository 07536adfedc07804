"""Checkpoint writers: official Uni-MoE → Hub format, and tiny random test checkpoints."""
